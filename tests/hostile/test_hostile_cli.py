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
    C("model-missing", f"{COMPILE} {{m}}/nope.onnx", "bad input", "file not found"),
    C("model-is-a-directory", f"{COMPILE} {{m}}/folder.onnx", "bad input", "folder.onnx"),
    C("model-empty", f"{COMPILE} {{m}}/empty.onnx", "bad input", "empty.onnx"),
    C("model-json", f"{COMPILE} {{m}}/json.onnx", "bad input", "not an ONNX file"),
    C("model-garbage", f"{COMPILE} {{m}}/garbage.onnx", "bad input", "garbage.onnx"),
    C("model-truncated", f"{COMPILE} {{m}}/truncated.onnx", "bad input", "truncated.onnx"),
    C("model-pickle", f"{COMPILE} {{m}}/pickle.onnx", "bad input", "pickle", after=_no_pickle_ran),
    C("model-unknown-op", f"{COMPILE} {{m}}/unknown_op.onnx", "bad input", "NoSuchOp"),
    C("model-opset-99", f"{COMPILE} {{m}}/opset99.onnx", "bad input", "opset 99"),
    C("model-string-input-backend-cannot", "compile {m}/strings.onnx -b crashy -o {c}/out", "unsupported",
      "input 'x' (string)"),
    C("model-sequence-input-backend-cannot", "compile {m}/sequence.onnx -b crashy -o {c}/out", "unsupported",
      "input 's' (sequence of float32)"),
    C("model-no-outputs", f"{COMPILE} {{m}}/no_outputs.onnx", "bad input", "no outputs"),
    C("model-huge-declared-dims", f"{COMPILE} {{m}}/huge.onnx", "bad input", "too large"),
    C("model-two-dynamic-dims", f"{COMPILE} {{m}}/dyn2.onnx", "bad input", "--shape x="),
    C("inspect-opset-99", "inspect {m}/opset99.onnx", "bad input", "opset 99"),
    # --- external data ----------------------------------------------------------------------------------------------
    C("ext-absolute", f"{COMPILE} {{m}}/ext-absolute/model.onnx", "bad input", "outside the model's directory"),
    C("ext-dotdot", f"{COMPILE} {{m}}/ext-dotdot/model.onnx", "bad input", "outside the model's directory"),
    C("ext-symlink", f"{COMPILE} {{m}}/ext-symlink/model.onnx", "bad input", "symbolic link"),
    C("ext-hardlink", f"{COMPILE} {{m}}/ext-hardlink/model.onnx", "bad input", "hard links"),
    C("ext-missing", f"{COMPILE} {{m}}/ext-missing/model.onnx", "bad input", "nowhere.data"),
    C("ext-directory", f"{COMPILE} {{m}}/ext-directory/model.onnx", "bad input", "is a directory"),
    C("ext-negative-offset", f"{COMPILE} {{m}}/ext-negative/model.onnx", "bad input", "-16"),
    C("ext-truncated", f"{COMPILE} {{m}}/ext-truncated/model.onnx", "bad input", "truncated external data"),
    # --- shapes and options ----------------------------------------------------------------------------------------
    C("shape-overflow", f"{COMPILE} {{m}}/dyn.onnx --shape x=99999999999999999999x4", "bad input",
      "99999999999999999999"),
    C("shape-huge", f"{COMPILE} {{m}}/dyn.onnx --shape x=2000000000x4", "bad input", "too large"),
    C("shape-syntax", f"{COMPILE} {{m}}/dyn.onnx --shape x[0,4]", "bad input", "x[0,4]"),
    C("shape-unknown-input", f"{COMPILE} {{m}}/dyn.onnx --shape nope=1x4", "bad input", "nope"),
    C("shape-wrong-rank", f"{COMPILE} {{m}}/dyn.onnx --shape x=1x4x4", "bad input", "rank"),
    C("shape-range-huge", f"{COMPILE} {{m}}/dyn.onnx --shape x=1x4:2x4:2000000000x4", "bad input", "too large"),
    C("shape-range-reversed", f"{COMPILE} {{m}}/dyn.onnx --shape x=4x4:1x4:8x4", "bad input", "grow from MIN"),
    C("batch-syntax", f"{COMPILE} {{m}}/dyn.onnx --batch 8..1", "bad input", "--batch"),
    C("option-no-equals", f"{COMPILE} {{m}}/relu.onnx --option threads", "bad input", "threads"),
    C("option-unknown", f"{COMPILE} {{m}}/relu.onnx --option frobnicate=1", "bad input", "frobnicate"),
    C("int8-without-calibration", "compile {m}/relu.onnx --precision int8 -b openvino -o {c}/out", "bad input",
      "calibration"),
    C("unknown-flag", f"{COMPILE} {{m}}/relu.onnx --frobnicate", "bad input", "--frobnicate"),
    C("unknown-verb", "frobnicate", "bad input", "frobnicate"),
    C("tune-trials-negative", f"{COMPILE} {{m}}/relu.onnx --tune-trials -5", "bad input", "-5"),
    # --- targets and profiles -----------------------------------------------------------------------------------------
    C("target-unknown", f"{COMPILE} {{m}}/relu.onnx -t nvidia/nope", "bad input", "nvidia/nope"),
    C("target-binary", f"{COMPILE} {{m}}/relu.onnx -t {{c}}/bin.toml", "bad input", "not a text file",
      setup=_toml("bin.toml", b"\xff\xfe\x00\x01" * 64)),
    C("target-invalid-toml", f"{COMPILE} {{m}}/relu.onnx -t {{c}}/bad.toml", "bad input", "invalid TOML",
      setup=_toml("bad.toml", "id = [unclosed")),
    C("target-negative-cores", f"{COMPILE} {{m}}/relu.onnx -t {{c}}/neg.toml", "bad input", "cores",
      setup=_toml("neg.toml", _target(-4))),
    C("target-absurd-cores", f"{COMPILE} {{m}}/relu.onnx -t {{c}}/big.toml", "bad input", "1000000000",
      setup=_toml("big.toml", _target(1_000_000_000))),
    C("profile-binary", f"{COMPILE} {{m}}/relu.onnx -p {{c}}/bin.toml", "bad input", "not a text file",
      setup=_toml("bin.toml", b"\xff\xfe\x00\x01" * 64)),
    C("profile-unknown", f"{COMPILE} {{m}}/relu.onnx -p nope", "bad input", "nope"),
    # --- data -------------------------------------------------------------------------------------------------------
    C("calibration-missing", f"{COMPILE} {{m}}/relu.onnx --calibration {{d}}/nope.npz", "bad input", "nope.npz"),
    C("calibration-garbage", f"{COMPILE} {{m}}/relu.onnx --calibration {{d}}/garbage.npz", "bad input",
      "garbage.npz"),
    C("calibration-text", f"{COMPILE} {{m}}/relu.onnx --calibration {{d}}/text.npz", "bad input", "text.npz"),
    C("calibration-objects", f"{COMPILE} {{m}}/relu.onnx --calibration {{d}}/objects.npz", "bad input",
      "objects.npz", after=_no_pickle_ran),
    C("calibration-wrong-name", f"{COMPILE} {{m}}/relu.onnx --calibration {{d}}/wrong_name.npz", "bad input",
      "no array for input"),
    C("calibration-nan", f"{COMPILE} {{m}}/relu.onnx --calibration {{d}}/nan.npz", "bad input", "NaN"),
    C("calibration-inf", f"{COMPILE} {{m}}/relu.onnx --calibration {{d}}/inf.npz", "bad input", "infinite"),
    C("validate-wrong-shape", "validate {b} --data {d}/wrong_shape.npz", "bad input", "3x5"),
    C("validate-wrong-dtype", "validate {b} --data {d}/wrong_dtype.npz", "bad input", "float64"),
    C("validate-empty", "validate {b} --data {d}/empty.npz", "bad input", "no samples"),
    C("validate-missing-labels", "validate {b} --data {d}/x.npz --labels label", "bad input", "label"),
    C("validate-labels-without-data", "validate {b} --labels label", "bad input", "--labels"),
    C("validate-negative-samples", "validate {b} --samples -1", "bad input", "-1"),
    C("validate-nan-threshold", "validate {b} --min-cosine nan", "bad input", "nan"),
    C("validate-folder-as-data", "validate {b} --data {d}/folder.npz", "bad input", "folder.npz"),
    C("run-pickle-npy", "run {b} --input {d}/pickle.npy", "bad input", "pickle.npy", after=_no_pickle_ran),
    # --- strings and sequences: plain .npy text and NAME.0, NAME.length keys; never a pickle ---------------------
    C("validate-string-bundle-no-data", "validate {strings}", "bad input", "validate --data"),
    C("profile-sequence-bundle-no-data", "profile {sequence} -p quick", "bad input", "profile --input"),
    C("string-object-array", "run {strings} --input {d}/strings_objects.npz", "bad input", "Python objects",
      after=_no_pickle_ran),
    C("string-huge-width", "run {strings} --input {d}/strings_wide.npz", "bad input", "2,000,000 characters"),
    C("string-bad-utf8", "run {strings} --input {d}/strings_bad_utf8.npz", "bad input", "not UTF-8"),
    C("string-surrogate", "run {strings} --input {d}/strings_surrogate.npz", "bad input", "not Unicode"),
    C("string-given-numbers", "run {strings} --input {d}/x.npz", "bad input", "takes strings"),
    C("sequence-one-array", "run {sequence} --input {d}/seq_one_array.npz", "bad input", "is one array"),
    C("sequence-gap", "run {sequence} --input {d}/seq_gap.npz", "bad input", "'s.2' is not an element"),
    C("sequence-length-lie", "run {sequence} --input {d}/seq_length_lie.npz", "bad input", "says 5"),
    C("sequence-huge-length", "run {sequence} --input {d}/seq_huge_length.npz", "bad input", "outside"),
    C("sequence-object-element", "run {sequence} --input {d}/seq_objects.npz", "bad input", "Python objects",
      after=_no_pickle_ran),
    C("sequence-wrong-dtype", "run {sequence} --input {d}/seq_wrong_dtype.npz", "bad input", "float64"),
    C("sequence-missing", "run {sequence} --input {d}/x.npz", "bad input", "s.length"),
    C("run-missing-input-file", "run {b} --input {d}/nope.npz", "bad input", "nope.npz"),
    C("run-output-in-proc", "run {b} --input {d}/x.npz --output /proc/onnxsmith-out.npz", "bad input",
      "/proc/onnxsmith-out.npz"),
    C("run-output-under-a-file", "run {b} --input {d}/x.npz --output /dev/null/y.npz", "bad input",
      "/dev/null/y.npz"),
    C("run-backend-error-one-line", "run {c}/gather --input {d}/gather_oob.npz", "backend failure",
      "out of data bounds", setup=lambda w, c: _compile_gather(w, c)),
    C("profile-rpc-not-a-host", "profile {b} --rpc not-a-host", "bad input", "not-a-host"),
    C("profile-rpc-bad-port", "profile {b} --rpc 127.0.0.1:99999", "bad input", "127.0.0.1:99999"),
    C("profile-rpc-unsupported-backend", "profile {b} --rpc 127.0.0.1:9090", "unsupported", "remotely"),
    C("profile-negative-iterations", "profile {b} --iterations -3", "bad input", "-3"),
    # --- output directories and the cache -------------------------------------------------------------------------
    C("out-in-proc", "compile {m}/relu.onnx -b onnxruntime -o /proc/onnxsmith-x", "bad input", "/proc/onnxsmith-x"),
    C("out-under-dev-null", "compile {m}/relu.onnx -b onnxruntime -o /dev/null/out", "bad input", "/dev/null"),
    C("out-is-a-file", "compile {m}/relu.onnx -b onnxruntime -o {d}/x.npz", "bad input", "x.npz"),
    C("out-foreign-non-empty", f"{COMPILE} {{m}}/relu.onnx", "bad input", "not empty", setup=_nonempty_out,
      after=_keeps_precious),
    C("out-is-the-model-folder", "compile {m}/relu.onnx -b onnxruntime --force -o {m}", "bad input",
      "one of this command's inputs"),
    C("out-inside-the-cache", "compile {m}/relu.onnx -b onnxruntime -o {cache}/x", "bad input", "cache"),
    C("cache-is-a-file", f"{COMPILE} {{m}}/relu.onnx", "bad input", "cachefile", setup=_cache_file,
      env=(("ONNXSMITH_CACHE_DIR", "{c}/cachefile"),)),
    C("cache-unwritable", f"{COMPILE} {{m}}/relu.onnx", "bad input", "/proc/onnxsmith-cache",
      env=(("ONNXSMITH_CACHE_DIR", "/proc/onnxsmith-cache"),)),
    # --- bundles --------------------------------------------------------------------------------------------------
    C("bundle-missing", "run {c}/nope --input {d}/x.npz", "bad input", "nope"),
    C("bundle-no-manifest", "validate {m}", "bad input", "not an onnxsmith bundle"),
    C("bundle-manifest-not-json", "run {c}/bundle --input {d}/x.npz", "bad input", "manifest.json",
      setup=bundle_copy(files=lambda b: ((b / "manifest.json").write_text("{nope"),
                                         seal(b, (b / "manifest.json").read_bytes())))),
    C("bundle-edited-unsealed", "run {c}/bundle --input {d}/x.npz", "bad input", "manifest",
      setup=bundle_copy(_set("backend", "openvino"), reseal=False)),
    C("bundle-missing-model", "run {c}/bundle --input {d}/x.npz", "bad input", "'model'",
      setup=bundle_copy(_set("model", KeyError))),
    C("bundle-files-as-list", "run {c}/bundle --input {d}/x.npz", "bad input", "'files'",
      setup=bundle_copy(_set("files", lambda m: list(m["files"])))),
    C("bundle-format-version-string", "run {c}/bundle --input {d}/x.npz", "bad input", "format_version",
      setup=bundle_copy(_set("format_version", "2"))),
    C("bundle-newer-format", "run {c}/bundle --input {d}/x.npz", "bad input", "newer onnxsmith",
      setup=bundle_copy(_set("format_version", 99))),
    C("bundle-artifact-absolute", "run {c}/bundle --input {d}/x.npz", "bad input", "unsafe",
      setup=lambda w, c: bundle_copy(lambda m: m["artifact"].update(files=[str(w.outside / "evil.onnx")]))(w, c)),
    C("bundle-artifact-dotdot", "run {c}/bundle --input {d}/x.npz", "bad input", "unsafe",
      setup=bundle_copy(lambda m: m["artifact"].update(files=["../../../../outside/evil.onnx"]))),
    C("bundle-reference-passwd", "validate {c}/bundle", "bad input", "unsafe",
      setup=bundle_copy(_set("reference", "../../../../outside/passwd"))),
    C("bundle-files-outside", "validate {c}/bundle", "bad input", "unsafe",
      setup=bundle_copy(lambda m: m["files"].update({"../../../../outside/passwd": "0" * 64}))),
    C("bundle-artifact-symlink", "run {c}/bundle --input {d}/x.npz", "bad input", "symbolic link",
      setup=bundle_copy(files=_symlink_artifact)),
    C("bundle-artifact-edited", "run {c}/bundle --input {d}/x.npz", "bad input", "was modified",
      setup=bundle_copy(files=_append_artifact)),
    C("bundle-extra-file", "run {c}/bundle --input {d}/x.npz", "bad input", "not listed",
      setup=bundle_copy(files=lambda b: (b / "artifact" / "extra.so").write_bytes(b"\x7fELF"))),
    C("bundle-string-input", "validate {c}/bundle", "bad input", "onnx:8", setup=bundle_copy(_string_bundle)),
    C("bundle-other-backend-version", "run {c}/bundle --input {d}/x.npz", "bad input", "0.0.1",
      setup=bundle_copy(_set("backend_version", "0.0.1"))),
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
    from onnxsmith.cache import CompileCache

    entries = CompileCache(cache)
    assert entries.lookup(key) is not None, f"cache entry {key} was damaged"
