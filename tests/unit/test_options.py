"""parse_options: tmpfs's option language plus cctmpfs's own keys."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cctmpfs import options as options_mod
from cctmpfs.errors import OptionError
from cctmpfs.options import DEFAULT_PACK_BYTES, parse_options, split_option_strings

KiB, MiB, GiB = 1024, 1024 ** 2, 1024 ** 3
#: A fixed "physical RAM" so percentages and defaults have exact expected values.
FAKE_RAM = 16 * GiB


@pytest.fixture
def ram(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(options_mod, "total_ram_bytes", lambda: FAKE_RAM)
    return FAKE_RAM


def parse(*opts: str, **kw):  # type: ignore[no-untyped-def]
    return parse_options(list(opts), **kw)


def refused(*opts: str) -> str:
    with pytest.raises(OptionError) as info:
        parse(*opts)
    return str(info.value)


# ---- defaults --------------------------------------------------------------

def test_defaults(ram: int) -> None:
    o = parse()
    assert o.size_bytes == ram // 2
    assert o.block_size == 128 * KiB
    assert (o.codec, o.level, o.codec_spec) == ("zstd", 3, "zstd:3")
    assert o.root_mode == 0o1777
    assert (o.root_uid, o.root_gid) == (0, 0)
    assert o.nr_inodes == ram // 4096 // 2
    assert o.workers == 1
    assert o.dedup is True
    assert o.ram_bytes == ram // 2
    assert o.buffer_bytes == 512 * MiB
    assert "default_permissions" in o.fuse_options
    assert "big_writes" in o.fuse_options
    assert "fsname=cctmpfs" in o.fuse_options
    assert "subtype=cctmpfs" in o.fuse_options


def test_defaults_with_real_ram() -> None:
    o = parse()
    real = options_mod.total_ram_bytes()
    assert o.size_bytes == real * 50 // 100
    assert o.nr_inodes == real // 4096 // 2


def test_source_becomes_fsname(ram: int) -> None:
    assert "fsname=tmpfs" in parse(source="tmpfs").fuse_options
    o = parse("fsname=mine", source="tmpfs")
    assert [x for x in o.fuse_options if x.startswith("fsname=")] == ["fsname=mine"]


def test_default_permissions_and_big_writes_always_once(ram: int) -> None:
    for opts in ([], ["default_permissions"], ["allow_other,default_permissions"]):
        o = parse_options(opts)
        assert o.fuse_options.count("default_permissions") == 1
        assert o.fuse_options.count("big_writes") == 1
    # Mounting over a non-empty directory works, as on tmpfs.
    assert parse_options([]).fuse_options.count("nonempty") == 1
    assert parse_options(["nonempty"]).fuse_options.count("nonempty") == 1


def test_option_strings_split_on_commas_and_repeat(ram: int) -> None:
    assert split_option_strings(["a,b", "", "c,,d"]) == ["a", "b", "c", "d"]
    # libfuse's escapes: a backslash makes the next character literal, three
    # octal digits are one character (fstab's \054), a lone one at the end stays.
    assert split_option_strings([r"fsname=a\,b,x\\y,o\054p,t\\"]) == [
        "fsname=a,b", "x\\y", "o,p", "t\\"]
    o = parse_options(["size=1g,mode=755", "nr_inodes=10k"])
    assert (o.size_bytes, o.root_mode, o.nr_inodes) == (GiB, 0o755, 10 * KiB)


# ---- sizes -------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("0", 0), ("4096", 4096), ("512k", 512 * KiB), ("512K", 512 * KiB),
    ("64m", 64 * MiB), ("64M", 64 * MiB), ("8g", 8 * GiB), ("8G", 8 * GiB),
    ("2t", 2 * 1024 * GiB),
    ("50%", FAKE_RAM // 2), ("10%", FAKE_RAM * 10 // 100), ("100%", FAKE_RAM),
    ("200%", FAKE_RAM * 2),
])
def test_size_forms(ram: int, text: str, expected: int) -> None:
    # ram= given, so that tiny sizes test the parsing only (see below).
    assert parse(f"size={text}", "ram=1g").size_bytes == expected


def test_size_zero_means_unlimited_and_ram_defaults_to_half(ram: int) -> None:
    o = parse("size=0")
    assert o.size_bytes == 0
    assert o.ram_bytes == ram // 2


def test_size_limits_the_default_ram_budget(ram: int) -> None:
    o = parse("size=1g")
    assert o.ram_bytes == GiB
    assert o.buffer_bytes == GiB // 4


@pytest.mark.parametrize("text", ["small", "1x", "-1", "1.5g", "1 g", "g", "%", "0x10", "1gb"])
def test_size_malformed(ram: int, text: str) -> None:
    assert "size" in refused(f"size={text}")


def test_size_percentage_too_large(ram: int) -> None:
    assert "size" in refused("size=10001%")


def test_size_with_too_many_digits_is_an_option_error(ram: int) -> None:
    # Python refuses int() of more than 4300 digits with a plain ValueError.
    assert "size" in refused("size=" + "1" * 5000)


@pytest.mark.parametrize("opt,expected", [
    ("size=64k", 64 * KiB), ("size=4096", 4096), ("nr_blocks=16", 16 * 4096),
])
def test_small_size_is_accepted_as_tmpfs_does(ram: int, opt: str, expected: int) -> None:
    # tmpfs mounts with any size (it rounds up to pages); a limit smaller than
    # a few blocks is a legitimate tiny /tmp, and the user never gave ram=.
    assert parse(opt).size_bytes == expected


@pytest.mark.parametrize("text,expected", [
    ("1000", 1000), ("10k", 10 * KiB), ("2m", 2 * MiB), ("1g", GiB), ("3K", 3 * KiB),
])
def test_nr_inodes_forms(ram: int, text: str, expected: int) -> None:
    assert parse(f"nr_inodes={text}").nr_inodes == expected


def test_nr_inodes_zero_is_unlimited(ram: int) -> None:
    assert parse("nr_inodes=0").nr_inodes == 0


@pytest.mark.parametrize("text", ["50%", "many", "-5", "1.0"])
def test_nr_inodes_malformed(ram: int, text: str) -> None:
    assert "nr_inodes" in refused(f"nr_inodes={text}")


@pytest.mark.parametrize("text,expected", [
    ("1024", 1024 * 4096), ("256k", 256 * KiB * 4096), ("1m", MiB * 4096),
])
def test_nr_blocks_counts_pages(ram: int, text: str, expected: int) -> None:
    assert parse(f"nr_blocks={text}").size_bytes == expected


def test_nr_blocks_refuses_percent_and_size_together(ram: int) -> None:
    assert "nr_blocks" in refused("nr_blocks=50%")
    msg = refused("size=1g", "nr_blocks=1000")
    assert "size" in msg and "nr_blocks" in msg


# ---- mode, uid, gid, workers -------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("1777", 0o1777), ("755", 0o755), ("0700", 0o700), ("0", 0), ("7777", 0o7777),
    ("2775", 0o2775),
])
def test_mode(ram: int, text: str, expected: int) -> None:
    assert parse(f"mode={text}").root_mode == expected


@pytest.mark.parametrize("text", ["10000", "8", "rwx", "-1", "07778"])
def test_mode_malformed(ram: int, text: str) -> None:
    assert "mode" in refused(f"mode={text}")


def test_uid_gid(ram: int) -> None:
    o = parse("uid=1000", "gid=100")
    assert (o.root_uid, o.root_gid) == (1000, 100)


@pytest.mark.parametrize("opt", ["uid=-1", "gid=-1", "uid=root", "gid=x", "uid=4294967295",
                                 "gid=99999999999"])
def test_uid_gid_malformed(ram: int, opt: str) -> None:
    key = opt.split("=")[0]
    assert key in refused(opt)


@pytest.mark.parametrize("n", [1, 4, 64])
def test_workers(ram: int, n: int) -> None:
    assert parse(f"workers={n}").workers == n


@pytest.mark.parametrize("text", ["0", "65", "-1", "two"])
def test_workers_malformed(ram: int, text: str) -> None:
    assert "workers" in refused(f"workers={text}")


def test_backing_options(ram: int) -> None:
    o = parse()
    assert (o.backing, o.backing_size, o.backing_encrypt) == (None, 0, True)
    o = parse("backing=/dev/loop7")
    assert (o.backing, o.backing_size, o.backing_encrypt) == ("/dev/loop7", 0, True)
    o = parse("backing=rel/file.img,backing_size=2g,backing_encrypt=off")
    assert o.backing == os.path.abspath("rel/file.img")
    assert (o.backing_size, o.backing_encrypt) == (2 << 30, False)


@pytest.mark.parametrize("opts,word", [("backing_size=1g", "need backing="),
                                       ("backing_encrypt=off", "need backing="),
                                       ("backing=/x,backing_encrypt=yes", "on or off"),
                                       ("backing=/x,backing_size=10%", "backing_size"),
                                       ("backing=", "backing")])
def test_backing_options_refused(ram: int, opts: str, word: str) -> None:
    assert word in refused(opts)


@pytest.mark.parametrize("text,expected", [("on", True), ("off", False)])
def test_dedup(ram: int, text: str, expected: bool) -> None:
    assert parse(f"dedup={text}").dedup is expected


@pytest.mark.parametrize("text", ["yes", "1", "ON", "true"])
def test_dedup_malformed(ram: int, text: str) -> None:
    msg = refused(f"dedup={text}")
    assert "dedup" in msg and "on or off" in msg


def test_seal_priority(ram: int) -> None:
    assert parse("").seal_idle is True
    assert parse("seal_priority=idle").seal_idle is True
    assert parse("seal_priority=normal").seal_idle is False


@pytest.mark.parametrize("text", ["low", "IDLE", "0"])
def test_seal_priority_malformed(ram: int, text: str) -> None:
    msg = refused(f"seal_priority={text}")
    assert "seal_priority" in msg and "idle or normal" in msg


def test_transport(ram: int) -> None:
    assert parse().transport == "native"      # the default (options.DEFAULT_TRANSPORT)
    assert parse("transport=llfuse").transport == "llfuse"
    o = parse("transport=native,workers=4")   # workers= is llfuse's; accepted, unused
    assert (o.transport, o.workers) == ("native", 4)
    # The same passed-on options: the native transport maps them to mount(2).
    assert set(o.fuse_options) == set(parse("workers=4").fuse_options)


@pytest.mark.parametrize("opts,word", [("transport=", "transport"), ("transport=fuse3", "fuse3"),
                                       ("transport=Native", "Native"),
                                       ("allow_other,allow_root", "allow_root")])
def test_transport_refused(ram: int, opts: str, word: str) -> None:
    assert word in refused(opts)


def test_spin(ram: int) -> None:
    from cctmpfs.options import DEFAULT_SPIN_US, MAX_SPIN_US
    assert parse("transport=native").spin_us == DEFAULT_SPIN_US == parse().spin_us == 200
    assert parse("transport=native,spin=200").spin_us == 200
    assert parse("transport=native,spin=0").spin_us == 0
    assert parse(f"transport=native,spin={MAX_SPIN_US}").spin_us == MAX_SPIN_US
    # llfuse's C loop cannot poll: spin=0 says what it does anyway.
    assert parse("transport=llfuse").spin_us == 0
    assert parse("transport=llfuse,spin=0").spin_us == 0
    # spin= passes nothing on to the kernel.
    assert set(parse("transport=native,spin=50").fuse_options) == set(parse().fuse_options)


@pytest.mark.parametrize("opts,word", [("transport=native,spin=", "spin"),
                                       ("transport=native,spin=-1", "spin=-1"),
                                       ("transport=native,spin=1.5", "microseconds"),
                                       ("transport=native,spin=10001", "at most"),
                                       ("transport=native,spin=" + "9" * 50, "microseconds"),
                                       ("transport=llfuse,spin=100", "transport=native"),
                                       ("transport=llfuse,spin=1", "transport=native")])
def test_spin_refused(ram: int, opts: str, word: str) -> None:
    assert word in refused(opts)


def test_auto_unmount_passes_on_to_both_transports(ram: int) -> None:
    assert "auto_unmount" in parse("auto_unmount").fuse_options
    assert "auto_unmount" in parse("auto_unmount,transport=native").fuse_options


# ---- block size, codec ---------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("16k", 16 * KiB), ("32k", 32 * KiB), ("64k", 64 * KiB), ("128k", 128 * KiB),
    ("256k", 256 * KiB), ("512k", 512 * KiB), ("1m", MiB), ("1M", MiB), ("16384", 16384),
])
def test_block_size(ram: int, text: str, expected: int) -> None:
    assert parse(f"block_size={text}").block_size == expected


@pytest.mark.parametrize("text", ["8k", "2m", "100k", "48k", "0", "1g", "50%", "big"])
def test_block_size_refused(ram: int, text: str) -> None:
    assert "block_size" in refused(f"block_size={text}")


@pytest.mark.parametrize("text,codec,level,spec", [
    ("zstd", "zstd", 3, "zstd:3"), ("zstd:1", "zstd", 1, "zstd:1"),
    ("zstd:19", "zstd", 19, "zstd:19"), ("zstd:-5", "zstd", -5, "zstd:-5"),
    ("zstd:22", "zstd", 22, "zstd:22"), ("zstd:-7", "zstd", -7, "zstd:-7"),
    ("lz4", "lz4", 3, "lz4"), ("none", "none", 3, "none"),
])
def test_compress(ram: int, text: str, codec: str, level: int, spec: str) -> None:
    o = parse(f"compress={text}")
    assert o.codec == codec
    assert o.codec_spec == spec
    if codec == "zstd":
        assert o.level == level


@pytest.mark.parametrize("text", ["gzip", "zstd:23", "zstd:-8", "zstd:fast", "lz4:1",
                                  "none:0", "ZSTD", "zstd:3:4"])
def test_compress_refused(ram: int, text: str) -> None:
    assert "compress" in refused(f"compress={text}")


@pytest.mark.parametrize("text", ["zstd:", "lz4:", "none:"])
def test_compress_with_an_empty_level_is_refused(ram: int, text: str) -> None:
    assert "compress" in refused(f"compress={text}")


# ---- RAM budget and hot buffer ------------------------------------------------

def test_ram_and_buffer_forms(ram: int) -> None:
    o = parse("ram=2g", "buffer=256m")
    assert (o.ram_bytes, o.buffer_bytes) == (2 * GiB, 256 * MiB)
    assert parse("ram=25%").ram_bytes == ram // 4
    # Without buffer=, a quarter of ram=, capped at 512 MiB.
    assert parse("ram=1g").buffer_bytes == 256 * MiB
    assert parse("ram=8g").buffer_bytes == 512 * MiB


def test_ram_must_hold_four_blocks(ram: int) -> None:
    assert parse("ram=512k").ram_bytes == 512 * KiB            # 4 x 128k
    assert "ram" in refused("ram=511k")
    assert parse("block_size=16k", "ram=64k").ram_bytes == 64 * KiB
    assert "ram" in refused("block_size=1m", "ram=2m")


def test_buffer_checks(ram: int) -> None:
    assert parse("buffer=256k").buffer_bytes == 256 * KiB      # 2 x 128k
    assert "buffer" in refused("buffer=255k")
    assert "buffer" in refused("ram=1m", "buffer=2m")            # larger than ram=
    assert "buffer" in refused("buffer=10%")                     # no percentage
    assert "buffer" in refused("buffer=lots")
    assert "ram" in refused("ram=lots")


# ---- pass-through, ignored, refused ---------------------------------------------

@pytest.mark.parametrize("flag", sorted(options_mod.FUSE_FLAGS))
def test_fuse_flags_pass_through(ram: int, flag: str) -> None:
    assert flag in parse(flag).fuse_options


def test_fuse_keys_pass_through(ram: int) -> None:
    o = parse("allow_other", "subtype=tmp", "nosuid,nodev")
    assert "allow_other" in o.fuse_options
    assert "subtype=tmp" in o.fuse_options
    assert "subtype=cctmpfs" not in o.fuse_options
    assert "nosuid" in o.fuse_options and "nodev" in o.fuse_options


@pytest.mark.parametrize("opt", [
    "defaults", "noauto", "auto", "nofail", "_netdev", "user", "users", "relatime",
    "strictatime", "lazytime", "nodiratime", "inode64", "noswap", "huge=never",
    "mpol=default", "x-systemd.automount", "x-systemd.requires=foo.mount",
    "x-systemd.device-timeout=10s", "x-mount.mkdir", "comment=systemd.automount",
])
def test_mount8_only_options_are_ignored(ram: int, opt: str) -> None:
    plain = parse()
    o = parse(opt)
    assert o == plain
    assert not any(opt.split("=")[0] in f for f in o.fuse_options)


@pytest.mark.parametrize("opts", [["ro"], ["rw,ro"], ["ro,size=1g"]])
def test_ro_is_refused(ram: int, opts: list[str]) -> None:
    with pytest.raises(OptionError, match="ro"):
        parse_options(opts)


@pytest.mark.parametrize("opt", ["sizee=1g", "bogus", "compression=zstd", "blocksize=16k",
                                 "allow_other=1", "defaults=1", "huge", "fsname", "nodev=yes"])
def test_unknown_options_name_themselves(ram: int, opt: str) -> None:
    assert opt in refused(opt)
    assert opt in refused("size=1g", opt, "mode=755")


@pytest.mark.parametrize("key", ["size", "nr_inodes", "nr_blocks", "mode", "uid", "gid",
                                 "compress", "block_size", "ram", "buffer", "workers", "dedup"])
def test_valued_keys_need_a_value(ram: int, key: str) -> None:
    assert key in refused(key)
    assert key in refused(f"{key}=")


# ---- fuzz ------------------------------------------------------------------------

_KEYS = ["size", "nr_inodes", "nr_blocks", "mode", "uid", "gid", "compress", "block_size",
         "ram", "buffer", "workers", "dedup", "backing_encrypt", "backing_size", "fsname", "subtype", "huge", "x-systemd.foo", "ro", "rw",
         "allow_other", "defaults", "bogus", ""]
_VALUES = st.one_of(
    st.text(max_size=12),
    st.from_regex(r"\A-?[0-9]{1,25}[kKmMgGtTpPeE%]?\Z"),
    st.sampled_from(["zstd", "zstd:", "zstd:99", "lz4", "none", "16k", "1m", "50%", "0", "on", "off"]),
)
_OPTION = st.one_of(
    st.text(max_size=20),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(_KEYS), _VALUES),
    st.sampled_from(_KEYS),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.builds(",".join, st.lists(_OPTION, max_size=5)), max_size=3))
def test_arbitrary_option_strings_raise_only_option_error(opts: list[str]) -> None:
    try:
        o = parse_options(opts)
    except OptionError as e:
        assert str(e)
        return
    # Whatever was accepted is a consistent configuration.
    assert o.block_size & (o.block_size - 1) == 0
    assert 16 * KiB <= o.block_size <= MiB
    assert 2 * o.block_size <= o.buffer_bytes <= o.ram_bytes
    assert 0 <= o.root_mode <= 0o7777
    assert 1 <= o.workers <= 64
    assert "default_permissions" in o.fuse_options and "big_writes" in o.fuse_options
    assert all(isinstance(x, str) and "," not in x for x in o.fuse_options)
    assert o.codec in ("zstd", "lz4", "none")


# ---- recompress= -------------------------------------------------------------

def test_recompress_defaults_to_level_9_when_it_can_gain(ram: int) -> None:
    assert parse().recompress_level == options_mod.DEFAULT_RECOMPRESS_LEVEL == 9
    assert parse("compress=lz4").recompress_level == 9
    assert parse("compress=zstd:9").recompress_level == 0     # nothing to gain
    assert parse("compress=none").recompress_level == 0


@pytest.mark.parametrize("text, level", [("off", 0), ("15", 15), ("22", 22), ("4", 4)])
def test_recompress_levels(ram: int, text: str, level: int) -> None:
    assert parse(f"recompress={text}").recompress_level == level


@pytest.mark.parametrize("opts, message", [
    (("recompress=on",), "must be off or a zstd level 1..22"),
    (("recompress=0",), "must be off or a zstd level 1..22"),
    (("recompress=23",), "must be off or a zstd level 1..22"),
    (("recompress=-3",), "must be off or a zstd level 1..22"),
    (("recompress=",), "needs a value"),
    (("compress=zstd:9", "recompress=9"), "must be stronger than compress=zstd:9"),
    (("compress=none", "recompress=9"), "compress=none stores nothing compressed"),
])
def test_recompress_bad_values(ram: int, opts: tuple[str, ...], message: str) -> None:
    assert message in refused(*opts)


# ---- fuse_off= / fuse_on=: the native transport's INIT flags ----------------------

def test_fuse_flags_default_leaves_writeback_cache_off(ram: int) -> None:
    opts = parse_options(["transport=native"])
    assert opts.fuse_flags == options_mod.DEFAULT_FUSE_FLAGS
    assert "writeback_cache" not in opts.fuse_flags
    assert {"max_pages", "handle_killpriv_v2", "atomic_o_trunc"} <= opts.fuse_flags


def test_fuse_off_and_on_take_colon_separated_names(ram: int) -> None:
    opts = parse_options(["transport=native,fuse_off=max_pages:async_read,fuse_on=writeback_cache"])
    assert opts.fuse_flags == (options_mod.DEFAULT_FUSE_FLAGS - {"max_pages", "async_read"}) \
        | {"writeback_cache"}


@pytest.mark.parametrize("opt", ["fuse_off=max_page", "fuse_off=max_pages:", "fuse_on=BIG_WRITES",
                                 "fuse_off=max_pages,async_read"])
def test_unknown_fuse_flag_is_an_option_error_naming_it(ram: int, opt: str) -> None:
    with pytest.raises(OptionError) as e:
        parse_options(["transport=native", opt])
    assert opt.split("=")[0] in str(e.value) or "async_read" in str(e.value)


def test_fuse_off_on_llfuse_is_accepted_but_still_checked(ram: int) -> None:
    opts = parse_options(["transport=llfuse", "fuse_off=max_pages"])
    assert opts.transport == "llfuse" and "max_pages" not in opts.fuse_flags
    with pytest.raises(OptionError):
        parse_options(["transport=llfuse", "fuse_off=nonsense"])   # a typo fails on any transport


# ---- pack= -------------------------------------------------------------------

def test_pack_defaults_on_and_can_be_turned_off(ram: int) -> None:
    assert parse().pack is True
    assert parse("pack=on").pack is True
    assert parse("pack=off").pack is False


@pytest.mark.parametrize("text", ["yes", "ON", "x" * 100, "-1", "k"])
def test_pack_bad_values(ram: int, text: str) -> None:
    assert "must be on, off or a pack size" in refused(f"pack={text}")


def test_pack_size_defaults_to_1m_and_can_be_set_from_a_block_to_1m(ram: int) -> None:
    assert parse().pack_bytes == DEFAULT_PACK_BYTES == 1024 * 1024
    assert parse("pack=512k").pack_bytes == 512 * 1024 and parse("pack=512k").pack is True
    assert parse("pack=128k").pack_bytes == 128 * 1024
    assert parse("block_size=16k,pack=16k").pack_bytes == 16 * 1024
    assert parse("block_size=1m").pack_bytes == 1024 * 1024


@pytest.mark.parametrize("text", ["pack=64k", "pack=2m", "block_size=256k,pack=128k", "pack=1", "pack=5%"])
def test_pack_sizes_out_of_range(ram: int, text: str) -> None:
    msg = refused(text)
    assert "pack=" in msg and ("from block_size" in msg or "not allowed" in msg), msg


# ---- allocator= --------------------------------------------------------------

def test_allocator_defaults_to_pymalloc_and_can_be_malloc(ram: int) -> None:
    assert parse().allocator == "pymalloc"
    assert parse("allocator=malloc").allocator == "malloc"
    assert parse("allocator=pymalloc").allocator == "pymalloc"


@pytest.mark.parametrize("text", ["glibc", "debug", "MALLOC", "x" * 100])
def test_allocator_bad_values(ram: int, text: str) -> None:
    assert "must be pymalloc or malloc" in refused(f"allocator={text}")


# ---- wronly= -----------------------------------------------------------------

def test_wronly_defaults_cached_and_can_be_direct(ram: int) -> None:
    assert parse().wronly_direct is False
    assert parse("wronly=direct").wronly_direct is True
    assert parse("wronly=cached").wronly_direct is False
    # Accepted under llfuse too, as fuse_on= is: one fstab line switches transport= alone.
    assert parse("transport=llfuse,wronly=cached").wronly_direct is False


@pytest.mark.parametrize("text", ["on", "Direct", "writeback"])
def test_wronly_bad_values(ram: int, text: str) -> None:
    assert "must be direct or cached" in refused(f"wronly={text}")
