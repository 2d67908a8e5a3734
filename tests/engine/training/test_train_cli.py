from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.cli import main
from engine.shared_data import data_path
from engine.training.bench import markdown, run_benchmark

REGEX = r"^(.*?)-\d+-400-\d+$"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 real pairs from 4 cases (3 each), linked into a temporary images/ + masks/ folder."""
    src = data_path("seg", "ebhi-adenocarcinoma")
    root = tmp_path_factory.mktemp("ebhi-tiny")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    by_case: dict[str, list[Path]] = {}
    for img in sorted((src / "images").glob("*.png")):
        by_case.setdefault(re.match(REGEX, img.stem).group(1), []).append(img)  # type: ignore[union-attr]
    cases = [c for c, imgs in by_case.items() if len(imgs) >= 3][:4]
    for c in cases:
        for img in by_case[c][:3]:
            (root / "images" / img.name).symlink_to(img)
            (root / "masks" / img.name).symlink_to(src / "masks" / img.name)
    return root


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


TRAIN = ["--size", "32", "--crop", "32", "--steps", "2", "--batch-size", "2", "--threads", "2"]


def test_train_distill_evaluate_round_trip(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher = tmp_path / "t.safetensors"
    code, out, err = _run(["train-teacher", "--data", str(tiny_data), "--group-regex", REGEX, "--out", str(teacher),
                           "--model", "mobile-unet", *TRAIN, "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["status"] == "done" and teacher.is_file() and teacher.with_suffix(".json").is_file()
    split_file = Path(res["split_file"])
    split_before = split_file.read_text()
    assert 0 <= res["val"]["miou"] <= 1

    student = tmp_path / "s.safetensors"
    code, out, err = _run(["distill", "--teacher", str(teacher), "--data", str(tiny_data), "--method", "coco",
                           "--student", "mobile-unet-small", "--out", str(student), *TRAIN, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["method"] == "coco" and student.is_file()
    assert split_file.read_text() == split_before  # the teacher's split is reused, never redrawn

    code, out, err = _run(["evaluate", "--model", str(student), "--data", str(tiny_data), "--json"], capsys)
    assert code == 0, err
    ev = json.loads(out)
    assert set(ev) >= {"miou", "dice", "pixel_accuracy", "per_class"}
    assert set(ev["per_class"]) == {"background", "tumour"}
    assert ev["images"] == len(json.loads(split_before)["test"])

    code, _, err = _run(["evaluate", "--model", str(student), "--data", str(tiny_data),
                         "--split-file", str(tmp_path / "missing.json")], capsys)
    assert code == 1 and err.count("\n") == 1 and "no such file" in err and "case lists" in err

    code, out, _ = _run(["evaluate", "--model", str(student), "--data", str(tiny_data), "--split", "all"], capsys)
    assert code == 0 and "mIoU" in out and "(12 images)" in out


def test_user_errors_are_one_line(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "m.safetensors"
    torch.save({"w": torch.zeros(1)}, bad)
    code, _, err = _run(["evaluate", "--model", str(bad), "--data", str(tiny_data), "--split", "all"], capsys)
    assert code == 1 and err.count("\n") == 1 and "pickles" in err
    code, _, err = _run(["train-teacher", "--data", str(tiny_data), "--group-regex", "^.*$",
                         "--out", str(tmp_path / "t.safetensors")], capsys)
    assert code == 1 and "first group is the case id" in err
    code, _, err = _run(["train-teacher", "--data", str(tmp_path), "--group-regex", REGEX,
                         "--out", str(tmp_path / "t.safetensors")], capsys)
    assert code == 1 and "images/ and masks/" in err


def test_unknown_method_is_a_clear_error(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher = tmp_path / "t.safetensors"
    assert main(["train-teacher", "--data", str(tiny_data), "--group-regex", REGEX, "--out", str(teacher),
                 "--model", "mobile-unet-small", *TRAIN]) == 0
    capsys.readouterr()
    code, _, err = _run(["distill", "--teacher", str(teacher), "--data", str(tiny_data), "--method", "magic",
                         "--out", str(tmp_path / "s.safetensors"), *TRAIN], capsys)
    assert code == 1 and "valid:" in err and "coco-full" in err and err.count("\n") == 1


def test_help_does_not_import_torch() -> None:
    code = ("import sys; from engine.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.strip() == "False"


TINY = {"size": 32, "crop": 32, "teacher": "mobile-unet", "teacher_steps": 2, "student_steps": 2,
        "batch_size": 2, "student": "mobile-unet-small", "speed_size": 32, "speed_rounds": 1}


def test_bench_harness_on_tiny_settings(tiny_data: Path, tmp_path: Path) -> None:
    report = run_benchmark(protocol="quick", data_dir=str(tiny_data), methods=["student", "coco"], device="cpu",
                           workdir=tmp_path, overrides=TINY)
    assert set(report["methods"]) == {"student", "coco"}
    assert report["methods"]["student"]["gap_closed"] in (None, pytest.approx(0.0))
    assert report["efficiency"]["params_ratio"] < 0.2
    assert "modified" in report["protocol"]
    table = markdown(report)
    assert "| coco |" in table and "gap closed" in table
    json.dumps(report)


def test_bench_resumes_from_its_workdir_and_ships_the_best_student(tiny_data: Path, tmp_path: Path) -> None:
    from engine.inference.spec import load_spec
    from engine.training.checkpoints import load_model
    from engine.training.ship import STUDENT_NAME, best_method, ship_student

    first = run_benchmark(protocol="quick", data_dir=str(tiny_data), methods=["student", "kd"], device="cpu",
                          workdir=tmp_path, overrides=TINY)
    ckpt = tmp_path / "student-kd-s0.safetensors"
    stamp, teacher_stamp = ckpt.stat().st_mtime_ns, (tmp_path / "teacher.safetensors").stat().st_mtime_ns
    again = run_benchmark(protocol="quick", data_dir=str(tiny_data), methods=["student", "kd"], device="cpu",
                          workdir=tmp_path, overrides=TINY)
    assert ckpt.stat().st_mtime_ns == stamp  # read back, not trained again
    assert again["methods"]["kd"]["runs"] == first["methods"]["kd"]["runs"]
    assert again["teacher"] == first["teacher"]
    changed = run_benchmark(protocol="quick", data_dir=str(tiny_data), methods=["kd"], device="cpu",
                            workdir=tmp_path, overrides={**TINY, "student_steps": 3})
    assert ckpt.stat().st_mtime_ns != stamp  # other student settings: the student is trained again …
    assert (tmp_path / "teacher.safetensors").stat().st_mtime_ns == teacher_stamp  # … the teacher is not
    assert changed["settings"]["student_steps"] == 3

    method, seed = best_method(first)
    vals = {m: first["methods"][m]["runs"][0]["val_miou"] for m in ("student", "kd")}
    assert vals[method] == max(vals.values())
    dest = tmp_path / "models"
    shipped = ship_student(first, tmp_path, dest, data_dir=str(tiny_data))
    spec = load_spec(dest / f"{STUDENT_NAME}.safetensors")
    assert spec.mpp is not None and spec.mpp > 0 and spec.classes == ("background", "tumour")
    model, meta = load_model(dest / f"{STUDENT_NAME}.safetensors")
    assert meta["model"]["name"] == "mobile-unet-small" and meta["benchmark"]["method"] == method
    assert "teacher" in shipped  # a Mobile U-Net teacher is far under the size limit
    card = (dest / "MODEL_CARD.md").read_text()
    assert method in card and "CC BY 4.0" in card and "by case" in card
    assert f"Only one {method} student (seed 0) has finished." in card and "not finished" not in card


def test_processes_sharing_a_workdir_share_its_runs(tiny_data: Path, tmp_path: Path) -> None:
    """A run another process is training (its lock held) is left to it by ``runs_only``; a report
    waits for it and reads back what that process wrote instead of training it again."""
    import threading
    import time

    from engine.locks import try_lock

    kw = {"protocol": "quick", "data_dir": str(tiny_data), "methods": ["student", "kd"], "device": "cpu",
          "workdir": tmp_path, "overrides": TINY}
    with try_lock(tmp_path / "runs" / "kd-s0.lock") as held:
        assert held
        partial = run_benchmark(runs_only=True, **kw)
    assert set(partial["runs"]) == {"student"} and not (tmp_path / "runs" / "kd-s0.json").exists()
    assert not list(tmp_path.glob("student-kd-s0*"))  # not started: the other process had it

    record = json.loads((tmp_path / "runs" / "student-s0.json").read_text())
    record["run"]["test_miou"] = 0.4321  # what "the other process" finishes with
    locked, released = threading.Event(), []

    def other_process() -> None:
        with try_lock(tmp_path / "runs" / "kd-s0.lock"):
            locked.set()
            time.sleep(1.0)
            (tmp_path / "runs" / "kd-s0.json").write_text(json.dumps(record))
            released.append(time.monotonic())

    thread = threading.Thread(target=other_process)
    thread.start()
    locked.wait(10)
    report = run_benchmark(**kw)
    thread.join(10)
    assert released and report["methods"]["kd"]["runs"][0]["test_miou"] == 0.4321
    assert not list(tmp_path.glob("student-kd-s0*"))  # waited and read back, never trained here


def test_mixture_protocol_machinery_on_a_tiny_mixture(tiny_mixture: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The cpu protocol's path end to end on tiny settings: mixture data with negatives, a crop bank of
    the teacher's outputs, two seeds paired against the plain student, per-folder scores, shipping."""
    from engine.training.checkpoints import load_meta
    from engine.training.ship import STUDENT_NAME, ship_student

    tiny = {**TINY, "bank": 8, "teacher_threads": 1, "student_threads": 1}
    report = run_benchmark(protocol="cpu", data_dir=str(tiny_mixture), methods=["student", "kd"], seeds=2,
                           device="cpu", workdir=tmp_path, overrides=tiny)
    assert report["data"]["negatives"] == ["ebhi-normal"] and report["data"]["balanced"]
    done = sorted(tmp_path.glob("runs/*.json"), key=lambda p: p.stat().st_mtime_ns)
    assert [p.stem for p in done] == ["student-s0", "kd-s0", "student-s1", "kd-s1"]  # seed-major: paired early
    assert list(tmp_path.glob("bank-*.safetensors"))
    for part in ("val", "test"):
        per = report["teacher"][part]["per_source"]
        assert set(per) == {"ebhi-normal", "ebhi-adenocarcinoma"}
        assert "tumour_share" in per["ebhi-normal"] and "all_tumour_miou" in per["ebhi-adenocarcinoma"]
    kd = report["methods"]["kd"]
    assert len(kd["runs"]) == 2 and kd["vs_student"]["pairs"] == 2 and kd["test_miou_sd"] is not None
    assert "negatives_tumour_share" in kd["runs"][0]["test"]
    balance = report["gradient_balance"]  # each method's terms against cross-entropy, fresh and trained
    assert set(balance) == {"student", "kd"} and balance["kd"]["seed"] == 0
    assert balance["kd"]["start"]["loss_kd"]["vs_ce"] > 0 and balance["kd"]["end"]["loss_kd"]["grad_norm"] > 0
    assert "loss_kd" not in balance["student"]["end"] and "| kd | dice " in markdown(report)
    kept = json.loads((tmp_path / "gradient-balance" / "kd-s0.json").read_text())["run"]
    assert kept["start"] == balance["kd"]["start"]  # kept in the work folder: a later report reads it back
    stamp = (tmp_path / "student-kd-s1.safetensors").stat().st_mtime_ns
    checked: list[float] = []

    def benign(model: torch.nn.Module, meta: dict) -> dict[str, float]:  # the real one runs a slide
        checked.append(meta["input"]["mpp"])
        return {"cmu-1-small-region.svs": 0.25}

    more = run_benchmark(protocol="cpu", data_dir=str(tiny_mixture), methods=["kd"], seeds=3, device="cpu",
                         workdir=tmp_path, overrides=tiny, benign_check=benign)
    assert (tmp_path / "student-kd-s1.safetensors").stat().st_mtime_ns == stamp  # a third seed keeps the first two
    assert [r["seed"] for r in more["methods"]["kd"]["runs"]] == [0, 1, 2]
    # the benign slide: the teacher and every kd run, the two read back included, at the card's µm/px
    assert len(checked) == 4 and set(checked) == {224 / 32}
    assert all(r["benign_slides"] == {"cmu-1-small-region.svs": 0.25} for r in more["methods"]["kd"]["runs"])
    assert more["teacher"]["benign_slides"] and "| 25.0 % ± 0.0 |" in markdown(more)
    record = tmp_path / "gradient-balance" / "kd-s0.json"
    saved = json.loads(record.read_text())
    saved["run"]["end"] = {"loss_ce": {"loss": 1.0, "grad_norm": 1.0, "vs_ce": 1.0}}
    record.write_text(json.dumps(saved))  # marked: read back, not measured again
    again = run_benchmark(protocol="cpu", data_dir=str(tiny_mixture), methods=["kd"], seeds=3, device="cpu",
                          workdir=tmp_path, overrides=tiny, benign_check=benign, finished_only=True)
    assert len(checked) == 4 and again["methods"]["kd"]["runs"][0]["benign_slides"]  # kept, not measured again
    assert again["gradient_balance"]["kd"]["end"] == saved["run"]["end"]
    partial = run_benchmark(protocol="cpu", data_dir=str(tiny_mixture), methods=["student", "kd", "cwd"], seeds=3,
                            device="cpu", workdir=tmp_path, overrides=tiny, finished_only=True)
    assert set(partial["methods"]) == {"student", "kd"} and not list(tmp_path.glob("student-cwd-*"))
    assert partial["missing_runs"] == ["cwd seed 0", "cwd seed 1", "student seed 2", "cwd seed 2"]
    assert "Not run yet (4)" in markdown(partial)
    ship_student(partial, tmp_path, tmp_path / "from-partial", data_dir=str(tiny_mixture))
    card = (tmp_path / "from-partial" / "MODEL_CARD.md").read_text()  # the card says what the choice did not see
    assert ("**The ablation was not finished**: 5 of 9 runs, so the choice is among those; missing: cwd seed 0, "
            "cwd seed 1, student seed 2, cwd seed 2.") in card
    shipped = ship_student(report, tmp_path, tmp_path / "models", data_dir=str(tiny_mixture))
    meta = load_meta(tmp_path / "models" / f"{STUDENT_NAME}.safetensors")
    assert set(meta["scale_tolerance"]) == {"0.5", "0.71", "1", "1.41", "2"} and "teacher" in shipped
    assert "split_file" not in meta["data"] and meta["data"]["test_cases"]
    card = (tmp_path / "models" / "MODEL_CARD.md").read_text()
    assert "ebhi-normal (no tumour)" in card and "all-tumour mIoU" in card

    # never worse: a new student that scores below the shipped one on images neither saw is refused
    from engine.errors import CocoPathError
    from engine.training import mixture

    scores = iter([0.2, 0.6])  # the new student, then the shipped one
    monkeypatch.setattr(mixture, "evaluate_by_source", lambda *a, **k: {
        "miou": next(scores), "dice": 0.0, "per_source": {}, "negatives_tumour_share": None})
    before = (tmp_path / "models" / f"{STUDENT_NAME}.safetensors").read_bytes()
    with pytest.raises(CocoPathError, match="0.2000 against 0.6000"):
        ship_student(report, tmp_path, tmp_path / "models", data_dir=str(tiny_mixture))
    assert (tmp_path / "models" / f"{STUDENT_NAME}.safetensors").read_bytes() == before
    scores = iter([0.2, 0.6])
    forced = ship_student(report, tmp_path, tmp_path / "models", data_dir=str(tiny_mixture), force=True)
    assert forced["replaces"]["previous_miou"] == 0.6 and forced["replaces"]["miou"] == 0.2

    # … nor one with a better mIoU that calls more of the tiles without tumour, or of a benign slide, tumour
    before = (tmp_path / "models" / f"{STUDENT_NAME}.safetensors").read_bytes()
    negatives = iter([0.30, 0.10])
    monkeypatch.setattr(mixture, "evaluate_by_source", lambda *a, **k: {
        "miou": 0.7, "dice": 0.0, "per_source": {}, "negatives_tumour_share": next(negatives)})
    with pytest.raises(CocoPathError, match=r"30.0 % of the pixels of the tiles without tumour called tumour against 10.0 %"):
        ship_student(report, tmp_path, tmp_path / "models", data_dir=str(tiny_mixture),
                     benign_check=lambda *a: {"cmu-1-small-region.svs": 0.0})
    negatives = iter([0.10, 0.10])
    slides = iter([{"cmu-1-small-region.svs": 0.25}, {"cmu-1-small-region.svs": 0.001}])  # new, then shipped
    with pytest.raises(CocoPathError, match=r"25.0 % of the tissue of the benign slide cmu-1-small-region.svs "
                                            r"called tumour against 0.1 %"):
        ship_student(report, tmp_path, tmp_path / "models", data_dir=str(tiny_mixture),
                     benign_check=lambda *a: next(slides))
    assert (tmp_path / "models" / f"{STUDENT_NAME}.safetensors").read_bytes() == before
    negatives = iter([0.104, 0.10])  # within the tolerances: shipped, and the card says both figures
    slides = iter([{"cmu-1-small-region.svs": 0.005}, {"cmu-1-small-region.svs": 0.001}])
    shipped = ship_student(report, tmp_path, tmp_path / "models", data_dir=str(tiny_mixture),
                           benign_check=lambda *a: next(slides))
    assert shipped["replaces"]["benign_slides"] == {"cmu-1-small-region.svs": 0.005}
    assert "on the benign slide cmu-1-small-region.svs 0.50 % of the tissue called tumour against 0.10 %" in \
        (tmp_path / "models" / "MODEL_CARD.md").read_text()


def test_bench_distill_ship_runs_the_benign_slide_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line hands --ship the inference layer's benign-slide check (training cannot import it)."""
    from engine.cli import build_parser
    from engine.inference import benign

    args = build_parser().parse_args(["bench", "distill", "--quick", "--workdir", "w", "--ship", "m"])
    seen: list[tuple[str, dict[str, int]]] = []
    monkeypatch.setattr(benign, "benign_slide_calls", lambda m, meta: seen.append((m, meta)) or {"slide": 0.2})
    assert args.benign_check("model", {"card": 1}) == {"slide": 0.2} and seen == [("model", {"card": 1})]


def test_paired_comparison_with_the_plain_student() -> None:
    from engine.training.bench import paired_test

    base = [{"seed": s, "test_miou": v} for s, v in enumerate([0.60, 0.62, 0.64])]
    better = [{"seed": s, "test_miou": v} for s, v in enumerate([0.65, 0.66, 0.70])]
    res = paired_test(better, base)
    assert res["pairs"] == 3 and res["diff_mean"] == pytest.approx(0.05)
    assert res["t"] > 0 and 0 < res["p"] < 0.05
    assert paired_test(better[:1], base) is None  # one pair: nothing to test


def test_ablation_pairs_the_methods_that_differ_in_one_term() -> None:
    from engine.training.bench import ablation, markdown

    def run(seed: int, test: float, neg: float | None = None, benign: float | None = None) -> dict:
        r = {"seed": seed, "test_miou": test, "val_miou": test + 0.01, "test": {}}
        if neg is not None:
            r["test"]["negatives_tumour_share"] = neg
        if benign is not None:
            r["benign_slides"] = {"a.svs": benign, "b.svs": benign + 0.2}
        return r

    runs = {"coco": [run(0, 0.60, 0.10, 0.05), run(1, 0.62, 0.20, 0.05)],
            "coco-adv": [run(0, 0.63, 0.05, 0.15), run(1, 0.66, 0.05, 0.25)],
            "coco-kd": [run(1, 0.70)],  # seed 1 only: one pair with coco, none with a missing kd
            "student": [run(2, 0.5)]}  # no seed in common with coco: no row
    rows = {r["term"]: r for r in ablation(runs)}
    assert set(rows) == {"adversarial term, on top of the correlation", "pixel KD, on top of the correlation"}
    adv = rows["adversarial term, on top of the correlation"]
    assert (adv["with"], adv["without"], adv["pairs"]) == ("coco-adv", "coco", 2)
    assert adv["test_miou"]["diff_mean"] == pytest.approx(0.035) and adv["test_miou"]["p"] is not None
    assert adv["negatives"]["diff_mean"] == pytest.approx(-0.10)
    assert adv["benign_slides"]["diff_mean"] == pytest.approx(0.15)  # mean over the slides, paired
    kd = rows["pixel KD, on top of the correlation"]
    assert kd["pairs"] == 1 and kd["test_miou"]["diff_mean"] == pytest.approx(0.08) and kd["test_miou"]["diff_sd"] is None
    assert kd["negatives"] is None and kd["benign_slides"] is None  # coco-kd has neither figure
    report = {"teacher": {"model": "t", "test_miou": 0.8, "test_dice": 0.9, "val_miou": 0.8}, "protocol": "p",
              "protocol_note": "n", "methods": {}, "ablation": ablation(runs),
              "efficiency": {"speed_size": 224, "threads": 1, "flops_ratio": 0.1, "cpu_speedup": 2.0}}
    md = markdown(report)
    assert "| adversarial term, on top of the correlation | coco-adv − coco | 2 | +0.0350 ± 0.0071 (p = " in md
    assert "| -10.0 ± 7.1 (p = " in md and "| +0.0800 | +0.0800 | – | – |" in md
    from engine.training.bench import _p

    assert _p(0.0001) == "p < 0.001" and _p(0.0123) == "p = 0.012"  # never "p = 0.000"


def test_evaluate_sweeps_tumour_thresholds(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.models import create_model
    from engine.training.checkpoints import save_model

    m = create_model("mobile-unet-small", classes=2)
    model = save_model(tmp_path / "m.safetensors", m, {"model": m.config, "classes": ["background", "tumour"]})
    code, out, err = _run(["evaluate", "--model", str(model), "--data", str(tiny_data), "--split", "all",
                           "--thresholds", "0.5,0.9", "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)["thresholds"]
    assert [r["threshold"] for r in rows] == [0.5, 0.9]
    for r in rows:  # one folder, with tumour: its mIoU next to the constants
        [(name, folder)] = r["per_source"].items()
        assert name.startswith("ebhi-tiny") and 0 <= folder["miou"] <= 1 and "all_tumour_miou" in folder
    code, out, _ = _run(["evaluate", "--model", str(model), "--data", str(tiny_data), "--split", "all",
                         "--thresholds", "0.5"], capsys)
    assert code == 0 and out.startswith("threshold 0.5: mIoU ")
    code, _, err = _run(["evaluate", "--model", str(model), "--split", "all"], capsys)  # no folders to read
    assert code == 1 and err.count("\n") == 1 and "need --data" in err
    for bad in ("0.5,x", "1.5", "0"):
        code, _, err = _run(["evaluate", "--model", str(model), "--data", str(tiny_data), "--split", "all",
                             "--thresholds", bad], capsys)
        assert code == 1 and err.count("\n") == 1 and "--thresholds" in err
