"""``cocopath-engine bench distill``: the ablation of distillation methods on ebhi-adenocarcinoma.

One teacher, then every method with the same student, schedule and seeds, all on one split by case
(``^(.*?)-\\d+-400-\\d+$``). Reports test mIoU / Dice (mean ± sd over seeds), each method's share of
the teacher's mIoU and share of the student–teacher gap closed (relative to the plain student),
params / FLOPs (at 256²) and CPU images/s of teacher and student measured in the same run.

Protocols (``PROTOCOLS``), one command each:

- ``quick`` — ``cocopath-engine bench distill --quick``: 64² images, a few dozen steps, 1 seed;
  minutes on 2 cores. A smoke test of the whole harness: its numbers say little about the methods.
- ``cpu`` — ``cocopath-engine bench distill --protocol cpu --out resources/benchmarks/distill-cpu.json``:
  native 224², ResNet-50 teacher for 3000 steps (~2 h on 2 cores), each student method 1000 steps
  (≤ 30 min), 1 seed: the documented CPU protocol that fits a long working session (~6 h in all).
- ``session`` — ``cocopath-engine bench distill --protocol session --workdir W --out …``: what fits one
  ~2 h working session on 2 cores: ResNet-50 teacher 1200 steps on 128² crops, 300 steps per student
  method, 1 seed; the checkpoints stay in ``W`` and a killed run resumes there.
- ``full`` — ``cocopath-engine bench distill --protocol full --out resources/benchmarks/distill-full.json``:
  native 224², 8000 teacher steps, 4000 per student, 3 seeds; meant for a GPU (AMP, channels_last).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.locks import try_lock
from engine.training.augment import SCANNER, AugmentConfig
from engine.training.runs import Data, DataSpec, distill_student, images_per_second, load_data, train_teacher
from engine.training.evaluate import evaluate
from engine.training.trainer import ProgressFn, TrainConfig

if TYPE_CHECKING:
    from engine.training.ship import BenignCheck

log = logging.getLogger(__name__)

#: The settings a teacher depends on: a resumed run with other student settings reuses the teacher.
TEACHER_KEYS = ("data", "augment", "repeat", "size", "crop", "teacher", "teacher_steps", "batch_size", "lr")
#: Settings that do not change a finished student run (how many seeds, the speed measurement).
RUN_FREE_KEYS = ("seeds", "speed_size", "speed_rounds")
#: … and the crop bank of its outputs (the students' training data when ``bank`` > 0).
BANK_KEYS = (*TEACHER_KEYS, "bank")
METHODS = ("student", "kd", "skd", "cwd", "ft", "coco", "coco-gram", "coco-kd", "coco-adv", "coco-full")
REGEX = r"^(.*?)-\d+-400-\d+$"
_DEFAULTS: dict[str, Any] = {"data": "ebhi", "augment": "default", "repeat": {}, "bank": 0,
                             "teacher_threads": None, "student_threads": None}

PROTOCOLS: dict[str, dict[str, Any]] = {
    "quick": {**_DEFAULTS, "size": 64, "crop": 64, "teacher": "unet-resnet34", "teacher_steps": 40,
              "student": "mobile-unet", "student_steps": 20, "batch_size": 4, "lr": 2e-3, "seeds": 1,
              "paraphraser_steps": 10, "speed_size": 224, "speed_rounds": 7},
    "cpu": {**_DEFAULTS, "data": "mixture", "augment": "scanner", "size": None, "crop": 128,
            "teacher": "unet-resnet34", "teacher_steps": 3000, "student": "mobile-unet", "student_steps": 600,
            "batch_size": 8, "lr": 1e-3, "seeds": 3, "paraphraser_steps": 200, "bank": 3200,
            "teacher_threads": 2, "student_threads": 1, "speed_size": 224, "speed_rounds": 15},
    "cpu-long": {**_DEFAULTS, "data": "mixture", "augment": "scanner", "repeat": {"ebhi-high-grade-in": 3},
                 "size": None, "crop": 128,
                 "teacher": "unet-resnet34", "teacher_steps": 12000, "student": "mobile-unet", "student_steps": 2400,
                 "batch_size": 8, "lr": 1e-3, "seeds": 3, "paraphraser_steps": 400, "bank": 8000,
                 "teacher_threads": 2, "student_threads": 1, "speed_size": 224, "speed_rounds": 15},
    "session": {**_DEFAULTS, "size": None, "crop": 128, "teacher": "unet-resnet50", "teacher_steps": 1200,
                "student": "mobile-unet", "student_steps": 300, "batch_size": 8, "lr": 1e-3, "seeds": 1,
                "paraphraser_steps": 100, "speed_size": 224, "speed_rounds": 15},
    "full": {**_DEFAULTS, "data": "mixture", "augment": "scanner", "size": None, "crop": 224,
             "teacher": "unet-resnet34", "teacher_steps": 8000, "student": "mobile-unet", "student_steps": 4000,
             "batch_size": 16, "lr": 1e-3, "seeds": 5, "paraphraser_steps": 500, "bank": 0,
             "speed_size": 224, "speed_rounds": 15},
}
NOTES = {
    "quick": ("QUICK smoke protocol: 64x64 images (tiles downscaled from 224), a few dozen training steps, one "
              "seed, on CPU. It exercises the whole harness in minutes on 2 CPU cores; the networks are far from "
              "trained, differences between methods are within noise and say nothing about the paper's claims."),
    "cpu": ("CPU protocol (2 cores): the mixture of tumour and non-tumour tiles (adenocarcinoma and lymph-node "
            "metastasis; normal, low- and high-grade intraepithelial neoplasia and polyp tiles as negatives), "
            "split by case, balanced, with scanner augmentation (scale 0.5-2x, stain, blur, JPEG); ResNet-34 "
            "U-Net teacher on 128x128 crops on 2 threads; then the teacher's outputs and features are computed "
            "once on a fixed bank of augmented crops and every student method trains on that bank (student "
            "forward and backward only) on 1 thread, several seeds, paired by seed."),
    "cpu-long": ("CPU-LONG protocol: the cpu protocol with 4x the teacher steps (12000, about 3 h on 2 cores), "
                 "high-grade intraepithelial neoplasia tiles shown 3x as often (the earlier teacher called 62 % of "
                 "them tumour), a bank of 8000 crops and 2400 steps per student run: longer than one working "
                 "session, so it is meant to run in the background across sessions from the git-ignored work/ "
                 "folder (resumable)."),
    "session": ("SESSION protocol (CPU, one working session of ~2 h on 2 cores): native-resolution tiles, trained on "
                "random 128x128 crops and evaluated on the whole 224x224 test tiles; ResNet-50 U-Net teacher 1200 "
                "steps, every student method 300 steps, one seed. Far shorter than the paper's schedule: the "
                "networks are not converged, so the ranking of close methods is within noise."),
    "full": ("FULL protocol (a GPU): the cpu protocol's data and augmentation at native 224x224 crops, the "
             "teacher live (no bank), 8000 teacher steps, 4000 per student, 5 seeds."),
}


def _read_run(path: Path, proto: dict[str, Any]) -> dict[str, Any] | None:
    """A finished run's record, if ``path`` holds one made with the same protocol settings."""
    import json

    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved.get("run") if saved.get("settings") == proto else None


def _write_run(path: Path, proto: dict[str, Any], run: dict[str, Any]) -> None:
    import json

    from engine.training.checkpoints import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"settings": proto, "run": run}, indent=1).encode())


def _mean_sd(xs: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single run: no spread to report)."""
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def _tag(proto: dict[str, Any], keys: tuple[str, ...]) -> str:
    """A short hash of the settings ``keys``: names the resumable states made with them."""
    import hashlib
    import json

    blob = json.dumps({k: proto.get(k) for k in keys}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def _paired_diffs(runs: list[dict[str, Any]], base: list[dict[str, Any]],
                  value: Callable[[dict[str, Any]], float | None]) -> dict[str, Any] | None:
    """``value`` of each run minus that of the ``base`` run of the same seed (same student
    initialisation and batches), over the seeds both have: the number of pairs, the mean and sd of
    the differences, the paired t statistic and two-sided p (sd, t and p are None for one pair)."""
    by_seed = {r["seed"]: value(r) for r in base}
    diffs = [v - by_seed[r["seed"]] for r in runs
             if by_seed.get(r["seed"]) is not None and (v := value(r)) is not None]
    if not diffs:
        return None
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else None
    out: dict[str, Any] = {"pairs": len(diffs), "diff_mean": mean, "diff_sd": sd, "t": None, "p": None}
    if sd:
        from scipy import stats

        t = mean / (sd / len(diffs) ** 0.5)
        out["t"], out["p"] = t, float(2 * stats.t.sf(abs(t), len(diffs) - 1))
    return out


def paired_test(runs: list[dict[str, Any]], base: list[dict[str, Any]], key: str = "test_miou") -> dict[str, Any] | None:
    """Paired comparison with the plain student over the seeds both have: mean and sd of the
    differences, paired t statistic and two-sided p; None below two pairs (nothing to test)."""
    out = _paired_diffs(runs, base, lambda r: r[key])
    return out if out is not None and out["pairs"] >= 2 else None


def _negatives_share(run: dict[str, Any]) -> float | None:
    return run.get("test", {}).get("negatives_tumour_share")


def _benign_mean(run: dict[str, Any]) -> float | None:
    slides = run.get("benign_slides")
    return sum(slides.values()) / len(slides) if slides else None


#: What each of CoCo DistillNet's terms adds, as the paired difference (same seed) between two
#: methods whose configurations (resources/configs/distill) differ in that term alone:
#: (the term, the method with it, the method without it).
ABLATION = (
    ("cross-layer correlation, on the labels alone", "coco", "student"),
    ("cross-layer correlation, on top of pixel KD", "coco-kd", "kd"),
    ("pixel KD, on top of the correlation", "coco-kd", "coco"),
    ("adversarial term, on top of the correlation", "coco-adv", "coco"),
    ("factor transfer and adversarial term, on top of correlation and KD", "coco-full", "coco-kd"),
    ("positions × positions correlation instead of the channel × channel Gram", "coco", "coco-gram"),
)
ABLATION_VALUES: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "val_miou": lambda r: r["val_miou"], "test_miou": lambda r: r["test_miou"],
    "negatives": _negatives_share, "benign_slides": _benign_mean}


def ablation(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """:data:`ABLATION`'s paired differences for the pairs of methods both run on a common seed."""
    rows = []
    for term, with_, without in ABLATION:
        if with_ not in runs or without not in runs:
            continue
        diffs = {k: _paired_diffs(runs[with_], runs[without], v) for k, v in ABLATION_VALUES.items()}
        if diffs["test_miou"] is not None:
            rows.append({"term": term, "with": with_, "without": without,
                         "pairs": diffs["test_miou"]["pairs"], **diffs})
    return rows


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (the protocol fixes them), then restore the count."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _data_spec(proto: dict[str, Any], data_dir: str | None, work: Path) -> DataSpec:
    from engine.shared_data import data_path
    from engine.training import mixture

    if proto["data"] == "mixture":
        root = Path(data_dir) if data_dir else data_path("seg")
        folders = tuple(str(root / f) for f in mixture.FOLDERS if (root / f).is_dir())
        negatives = tuple(Path(f).name for f in folders if Path(f).name in mixture.NEGATIVES)
        if not negatives or len(negatives) == len(folders):
            raise ValueError(f"{root}: the mixture needs folders with and without tumour ({', '.join(mixture.FOLDERS)})")
        return DataSpec(folders, mixture.REGEX, str(work / "split.json"), 0, proto["size"], proto["crop"],
                        negatives=negatives, balance=True, repeat=tuple(sorted(proto["repeat"].items())))
    folder = data_dir or str(data_path("seg", "ebhi-adenocarcinoma"))
    return DataSpec((folder,), REGEX, str(work / "split.json"), 0, proto["size"], proto["crop"],
                    repeat=tuple(sorted(proto["repeat"].items())))


def _augment(proto: dict[str, Any]) -> AugmentConfig:
    from dataclasses import replace

    return replace(SCANNER, crop=proto["crop"]) if proto["augment"] == "scanner" else AugmentConfig(crop=proto["crop"])


def _scores(model: torch.nn.Module, data: Data, part: str) -> dict[str, Any]:
    """mIoU / Dice over the split part, and per source folder where the data is a mixture."""
    from engine.training.mixture import evaluate_by_source

    ds = data.part(part)
    if len(data.spec.folders) > 1:
        return evaluate_by_source(model, ds, list(data.spec.classes))
    res = evaluate(model, ds, list(data.spec.classes))
    return {"miou": res["miou"], "dice": res["dice"]}


def prepare_teacher(
    proto: dict[str, Any], data: Data, work: Path, device: str = "auto", progress: ProgressFn | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained teacher and its record: read back from ``work`` or trained there (resumably)."""
    from engine.training.checkpoints import load_model

    settings = {k: proto[k] for k in TEACHER_KEYS}
    teacher_run = _read_run(work / "teacher-run.json", settings)
    if teacher_run is not None and (work / "teacher.safetensors").exists():
        teacher, _ = load_model(work / "teacher.safetensors")
        log.info("teacher read back from %s", work / "teacher.safetensors")
        return teacher.cpu(), teacher_run
    cfg_t = TrainConfig(steps=proto["teacher_steps"], batch_size=proto["batch_size"], lr=proto["lr"], seed=0,
                        device=device, state_every=100)
    t0 = time.perf_counter()
    with _threads(proto["teacher_threads"]):
        teacher, res_t, _ = train_teacher(data, proto["teacher"], cfg_t, work / "teacher.safetensors",
                                          progress=progress, resume=True,
                                          state_path=work / f"teacher-{_tag(proto, TEACHER_KEYS)}.state.safetensors")
        teacher_test = _scores(teacher, data, "test")
        teacher_val = _scores(teacher, data, "val")
    teacher_run = {"test_miou": teacher_test["miou"], "test_dice": teacher_test["dice"],
                   "val_miou": res_t.metrics.get("val_miou"),
                   "train_seconds": time.perf_counter() - t0 + res_t.metrics.get("resumed_seconds", 0.0),
                   "test": teacher_test, "val": teacher_val}
    _write_run(work / "teacher-run.json", settings, teacher_run)
    return teacher.cpu(), teacher_run


def run_benchmark(
    protocol: str = "quick", data_dir: str | None = None, seeds: int | None = None, device: str = "auto",
    methods: list[str] | None = None, progress: ProgressFn | None = None, workdir: Path | None = None,
    overrides: dict[str, Any] | None = None, teacher_only: bool = False, runs_only: bool = False,
    finished_only: bool = False, benign_check: BenignCheck | None = None,
) -> dict[str, Any]:
    """Run the ablation and return the report (JSON-ready); ``overrides`` replace protocol settings.

    ``benign_check`` (the command line passes :func:`engine.inference.benign.benign_slide_calls`):
    every student and the teacher also get the share of each benign real slide's tissue they call
    tumour (``benign_slides``), what the tiles do not show: a run read back without it gets it then.

    Checkpoints, the split, the crop bank and each finished run go to ``workdir`` (a temporary
    folder, removed afterwards, by default). A kept ``workdir`` makes the run resumable: a teacher,
    bank or method/seed finished there with the same settings is read back instead of made again,
    and an unfinished teacher or student continues from its last saved state (every 100 steps).
    ``teacher_only`` stops after the teacher and the bank; ``runs_only`` after the methods' runs,
    without the speed measurement and the report. Processes sharing ``workdir`` share its work: a
    run (or the teacher) is locked while trained; ``runs_only`` skips a run another process holds,
    and a report waits for it.
    ``finished_only`` reports the runs finished in ``workdir`` and trains nothing (a method or seed
    still missing is left out, and the report lists what is missing).
    """
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="cocopath-distill-bench-") as tmp:
            return run_benchmark(protocol, data_dir, seeds, device, methods, progress, Path(tmp), overrides,
                                 teacher_only, runs_only, finished_only, benign_check)
    from engine.distill.bank import load_or_build_bank
    from engine.models import count_flops, count_params, create_model

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    name = protocol
    proto = dict(PROTOCOLS[name])
    unknown = set(overrides or {}) - set(proto)
    if unknown:
        raise ValueError(f"unknown protocol setting(s) {', '.join(sorted(unknown))}")
    proto.update(overrides or {})
    if seeds:
        proto["seeds"] = seeds
    methods = list(methods if methods is not None else METHODS)
    work = Path(workdir)
    t_start = time.perf_counter()
    spec = _data_spec(proto, data_dir, work)
    data = load_data(spec, seed=0, augment=_augment(proto))
    # one process makes the teacher and the bank; another one started beside it waits, then reads them back
    with try_lock(work / "teacher.lock", wait=True):
        teacher, teacher_run = prepare_teacher(proto, data, work, device, progress)
        if benign_check is not None and "benign_slides" not in teacher_run and not teacher_only:
            teacher_run["benign_slides"] = _benign(benign_check, work / "teacher.safetensors", proto)
            _write_run(work / "teacher-run.json", {k: proto[k] for k in TEACHER_KEYS}, teacher_run)
        bank = None
        if proto["bank"]:
            with _threads(proto["teacher_threads"]):
                bank = load_or_build_bank(work / f"bank-{_tag(proto, BANK_KEYS)}.safetensors", data.train,
                                          teacher, proto["bank"], progress=progress)
    # what a student run depends on: more seeds or other timing settings keep the finished runs
    run_settings = {k: v for k, v in proto.items() if k not in RUN_FREE_KEYS}

    def student_run(seed: int, method: str, wait: bool) -> dict[str, Any] | None:
        """The run's record: read back, or trained here unless another process is training it (then
        None, or with ``wait`` its record once that process is done)."""
        run_file = work / "runs" / f"{method}-s{seed}.json"
        run = _read_run(run_file, run_settings)
        if run is None:
            with try_lock(run_file.with_suffix(".lock"), wait=wait) as held:
                if not held:
                    return None
                run = _read_run(run_file, run_settings)  # finished by the process that held the lock
                if run is None:
                    run = train_run(seed, method)
                    _write_run(run_file, run_settings, run)
        if benign_check is not None and "benign_slides" not in run:
            run["benign_slides"] = _benign(benign_check, work / f"student-{method}-s{seed}.safetensors", proto)
            _write_run(run_file, run_settings, run)
        return run

    def train_run(seed: int, method: str) -> dict[str, Any]:
        """Train (or resume) one student run and score it."""
        cfg_s = TrainConfig(steps=proto["student_steps"], batch_size=proto["batch_size"], lr=proto["lr"],
                            seed=seed, device=device, state_every=100)
        t0 = time.perf_counter()
        state = work / f"student-{method}-s{seed}-{_tag(run_settings, tuple(sorted(run_settings)))}.state.safetensors"
        with _threads(proto["student_threads"]):
            student, res, meta = distill_student(
                data, teacher, method, proto["student"], cfg_s,
                work / f"student-{method}-s{seed}.safetensors", paraphraser_steps=proto["paraphraser_steps"],
                progress=progress, bank=bank, state_path=state, resume=True)
            test = _scores(student, data, "test")
            val = _scores(student, data, "val") if len(spec.folders) > 1 else meta["metrics"]["val"]
        teacher.cpu()
        return {"seed": seed, "test_miou": test["miou"], "test_dice": test["dice"],
                "val_miou": meta["metrics"]["val"]["miou"], "final_loss": res.metrics.get("final_loss"),
                "seconds": time.perf_counter() - t0 + res.metrics.get("resumed_seconds", 0.0), "test": test,
                "val": {k: v for k, v in val.items() if k != "per_class"}}

    # seed-major: a run cut short (across sessions) has every method at its first seeds, paired
    order = [] if teacher_only else [(s, m) for s in range(proto["seeds"]) for m in methods]
    done: dict[tuple[int, str], dict[str, Any]] = {}
    busy: list[tuple[int, str]] = []
    missing: list[str] = []
    for seed, method in order:
        if finished_only and _read_run(work / "runs" / f"{method}-s{seed}.json", run_settings) is None:
            missing.append(f"{method} seed {seed}")
            continue
        run = student_run(seed, method, wait=False)
        if run is None:
            log.info("%s seed %d: another process is training it", method, seed)
            busy.append((seed, method))
        else:
            done[(seed, method)] = run
    # the runs other processes had: a report waits for them; runs_only leaves them to those processes
    for seed, method in [] if runs_only or finished_only else busy:
        done[(seed, method)] = student_run(seed, method, wait=True)
    runs: dict[str, list[dict[str, Any]]] = {}
    for seed, method in order:
        if (seed, method) in done:
            runs.setdefault(method, []).append(done[(seed, method)])
            log.info("%s seed %d: test mIoU %.4f", method, seed, done[(seed, method)]["test_miou"])
    if teacher_only or runs_only:
        return {"benchmark": "distill", "partial": True, "teacher": teacher_run, "runs": runs}
    t_miou = teacher_run["test_miou"]
    base = _mean_sd([r["test_miou"] for r in runs["student"]])[0] if "student" in runs else None
    table: dict[str, Any] = {}
    for method, rs in runs.items():
        m, sd = _mean_sd([r["test_miou"] for r in rs])
        d, dsd = _mean_sd([r["test_dice"] for r in rs])
        v, vsd = _mean_sd([r["val_miou"] for r in rs])
        gap = (m - base) / (t_miou - base) if base is not None and abs(t_miou - base) > 1e-9 else None
        table[method] = {"test_miou_mean": m, "test_miou_sd": sd, "test_dice_mean": d, "test_dice_sd": dsd,
                         "val_miou_mean": v, "val_miou_sd": vsd,
                         "share_of_teacher_miou": m / t_miou if t_miou else None, "gap_closed": gap,
                         "vs_student": (paired_test(rs, runs["student"]) if "student" in runs and method != "student"
                                        else None), "runs": rs}
    student_model = create_model(proto["student"])
    teacher_model = create_model(proto["teacher"])
    eff = {"teacher": {"model": proto["teacher"], "params": count_params(teacher_model),
                       "flops_256": count_flops(teacher_model, 256)},
           "student": {"model": proto["student"], "params": count_params(student_model),
                       "flops_256": count_flops(student_model, 256)},
           "speed_size": proto["speed_size"], "threads": torch.get_num_threads()}
    models = {"teacher": teacher_model, "student": student_model}
    if proto["teacher"] != "unet-resnet50":  # also compare with the paper-sized teacher of the full protocol
        models["reference_teacher"] = create_model("unet-resnet50")
        eff["reference_teacher"] = {"model": "unet-resnet50", "params": count_params(models["reference_teacher"]),
                                    "flops_256": count_flops(models["reference_teacher"], 256)}
    speed = images_per_second(models, proto["speed_size"], rounds=proto["speed_rounds"])
    for role, ips in speed.items():
        eff[role]["cpu_images_per_s"] = ips
    eff["flops_ratio"] = eff["student"]["flops_256"] / eff["teacher"]["flops_256"]
    eff["params_ratio"] = eff["student"]["params"] / eff["teacher"]["params"]
    eff["cpu_speedup"] = eff["student"]["cpu_images_per_s"] / eff["teacher"]["cpu_images_per_s"]
    if "reference_teacher" in eff:
        ref = eff["reference_teacher"]
        ref["student_flops_ratio"] = eff["student"]["flops_256"] / ref["flops_256"]
        ref["student_cpu_speedup"] = eff["student"]["cpu_images_per_s"] / ref["cpu_images_per_s"]
    best = max(table, key=lambda k: table[k]["test_miou_mean"]) if table else None
    best_val = max(table, key=lambda k: table[k]["val_miou_mean"]) if table else None
    full = table.get("coco-full", {})
    return {
        "benchmark": "distill",
        "protocol": name if not overrides else f"{name} (modified: {', '.join(sorted(overrides))})",
        "protocol_note": NOTES[name],
        "command": "cocopath-engine bench distill " + ("--quick" if name == "quick" else f"--protocol {name}"),
        "settings": proto,
        "data": {"folder": ", ".join(Path(f).name for f in spec.folders), "group_regex": spec.group_regex,
                 "negatives": list(spec.negatives), "balanced": spec.balance, "split_seed": 0,
                 "train_images": len(data.train), "val_images": len(data.val), "test_images": len(data.test),
                 "train_cases": len(data.split["train_cases"]), "val_cases": len(data.split["val_cases"]),
                 "test_cases": len(data.split["test_cases"])},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "device": device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")},
        "teacher": {"model": proto["teacher"], **teacher_run},
        "methods": table,
        "efficiency": eff,
        "targets": {
            "coco_full_is_best": best == "coco-full" if best else None,
            "coco_full_share_of_teacher_ge_0.98": (full.get("share_of_teacher_miou") or 0) >= 0.98 if full else None,
            "coco_full_gap_closed_ge_0.75": (full.get("gap_closed") or 0) >= 0.75 if full else None,
            "student_flops_le_10pct": eff["flops_ratio"] <= 0.10,
            "student_cpu_speedup_ge_5x": eff["cpu_speedup"] >= 5.0,
        },
        "ablation": ablation(runs),
        "gradient_balance": (gradient_balances(runs, work, teacher, bank, proto, run_settings)
                             if bank is not None and runs else {}),
        "missing_runs": missing,
        "best_method": best,
        "best_method_by_validation": best_val,
        "seconds": time.perf_counter() - t_start,
    }


def _pm(mean: float, sd: float | None) -> str:
    return f"{mean:.4f} ± {sd:.4f}" if sd is not None else f"{mean:.4f} (1 seed)"


def _p(p: float) -> str:
    """A p-value as printed: three decimals, or "< 0.001" where those would read 0.000."""
    return "p < 0.001" if p < 0.0005 else f"p = {p:.3f}"


def _paired(r: dict[str, Any] | None) -> str:
    if not r:
        return "–"
    p = f", {_p(r['p'])}" if r.get("p") is not None else ""
    return f"{r['diff_mean']:+.4f} ± {r['diff_sd']:.4f}{p}"


def gradient_balances(runs: dict[str, list[dict[str, Any]]], work: Path, teacher: torch.nn.Module,
                      bank: Any, proto: dict[str, Any], run_settings: dict[str, Any],
                      batches: int = 8) -> dict[str, Any]:
    """Each method's :func:`~engine.distill.diagnostics.gradient_balance` on the same ``batches``
    batches of the crop bank: for a fresh student as training starts (critic and adapters fresh, the
    paraphraser pre-trained for the protocol's steps, here on those batches) and for its first seed's
    trained student, where the terms reading the critic or a connector are left out (those modules
    are not saved with a student). Kept in ``work/gradient-balance/``: a later report reads it back."""
    import itertools
    from dataclasses import replace

    from engine.distill.config import load_config
    from engine.distill.diagnostics import gradient_balance
    from engine.distill.distiller import Distiller
    from engine.models import create_model
    from engine.training.checkpoints import load_model

    data: list[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]] = []
    out: dict[str, Any] = {}
    with _threads(proto["student_threads"]):
        for method, rs in runs.items():
            seed = min(r["seed"] for r in rs)
            kept = work / "gradient-balance" / f"{method}-s{seed}.json"
            balance = _read_run(kept, run_settings)
            if balance is None:
                if not data:  # made once, and only when a run lacks its balance
                    size = proto["batch_size"]
                    pick = torch.randperm(len(bank), generator=torch.Generator().manual_seed(0))[: batches * size]
                    items = [bank[i] for i in pick.tolist()]
                    data = [(torch.stack([x for x, _, _ in chunk]), torch.stack([y for _, y, _ in chunk]),
                             {k: torch.stack([t[k] for _, _, t in chunk]) for k in chunk[0][2]})
                            for chunk in (items[j:j + size] for j in range(0, len(items), size))]
                torch.manual_seed(seed)
                fresh = create_model(proto["student"])
                trained, _ = load_model(work / f"student-{method}-s{seed}.safetensors")
                config = replace(load_config(method), paraphraser_steps=proto["paraphraser_steps"])
                balance = {}
                for when, student in (("start", fresh), ("end", trained.float())):
                    distiller = Distiller(config, teacher.float(), student)
                    try:
                        distiller.train()
                        if when == "start":  # as training starts: paraphraser pre-trained, critic fresh
                            distiller.prepare(itertools.cycle([(x, t) for x, _, t in data]))
                        balance[when] = gradient_balance(distiller, data, skip_unsaved=when == "end")
                    finally:
                        distiller.close()
                _write_run(kept, run_settings, balance)
            out[method] = {"seed": seed, **balance}
    return out


def _balance(terms: dict[str, Any]) -> str:
    """"coco 0.271 (0.60×)": each term but cross-entropy, its weighted loss and gradient / CE's."""
    return ", ".join(f"{k.removeprefix('loss_')} {v['loss']:.3f} ({v['vs_ce']:.2f}×)"
                     for k, v in terms.items() if k != "loss_ce" and v.get("vs_ce") is not None) or "–"


def _table(intro: str, header: list[str]) -> list[str]:
    """A report section's opening: a blank line, the paragraph, a blank line, the table's head."""
    return ["", intro, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def _delta(d: dict[str, Any] | None, scale: float = 1.0) -> str:
    """A paired difference as "+x ± sd (p = …)", scaled (100: percentage points); "–" without one."""
    if not d:
        return "–"
    digits = 1 if scale != 1.0 else 4
    text = f"{scale * d['diff_mean']:+.{digits}f}"
    if d["diff_sd"] is not None:
        text += f" ± {scale * d['diff_sd']:.{digits}f}"
    return text + (f" ({_p(d['p'])})" if d.get("p") is not None else "")


def _percent(shares: list[float]) -> str:
    """Shares over seeds as "mean % ± sd" ("–" when there is none)."""
    if not shares:
        return "–"
    m, sd = _mean_sd(shares)
    return f"{100 * m:.1f} %" + (f" ± {100 * sd:.1f}" if sd is not None else "")


def _negatives(r: dict[str, Any]) -> str:
    return _percent([s for run in r["runs"] if (s := _negatives_share(run)) is not None])


def _source_table(scores: dict[str, Any]) -> list[str]:
    from engine.training.mixture import negative_text

    lines = ["| folder | images | mIoU / tumour share | all-tumour mIoU | all-background mIoU |", "|---|---|---|---|---|"]
    for name, r in (scores.get("per_source") or {}).items():
        if "miou" in r:
            lines.append(f"| {name} | {r['images']} | mIoU {r['miou']:.4f} | {r['all_tumour_miou']:.4f} | "
                         f"{r['all_background_miou']:.4f} |")
        else:
            lines.append(f"| {name} (no tumour) | {r['images']} | {negative_text(r)} | – | – |")
    return lines


def _benign(check: BenignCheck, model_file: Path, proto: dict[str, Any]) -> dict[str, float]:
    """``check`` on a saved model, read at the µm/px its shipped card would state."""
    from engine.training.checkpoints import load_model
    from engine.training.ship import with_card_mpp

    model, meta = load_model(model_file)
    return check(model, with_card_mpp(meta, proto))


def _benign_share(runs: list[dict[str, Any]]) -> str:
    return _percent([s for r in runs if (s := _benign_mean(r)) is not None])


def markdown(report: dict[str, Any]) -> str:
    t = report["teacher"]
    val = f"{t['val_miou']:.4f}" if t.get("val_miou") is not None else "–"
    lines = [f"## Distillation ablation — protocol `{report['protocol']}`", "", report["protocol_note"], "",
             f"Teacher {t['model']}: validation mIoU {val}, test mIoU {t['test_miou']:.4f}, "
             f"Dice {t['test_dice']:.4f}"
             + (f"; tissue of the benign real slides called tumour {_benign_share([t])}" if t.get("benign_slides") else ""),
             ""]
    if t.get("test", {}).get("per_source"):
        lines += ["Teacher on the test split, by folder:", "", *_source_table(t["test"]), ""]
    lines += ["Per method: mean ± sd over seeds; the paired difference is the method's test mIoU minus the plain "
              "student's of the same seed (mean ± sd, paired t-test p); 'negatives' is the share of pixels called "
              "tumour on the normal / LGIN / HGIN test tiles; 'benign slides' the share of the tissue of the benign "
              "real slides (cmu-1-small-region) called tumour, whole-slide inference as in the app.", "",
              "| method | validation mIoU | test mIoU | vs student alone (paired) | test Dice | % of teacher mIoU | "
              "gap closed | negatives | benign slides |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["methods"].items():
        share = f"{100 * r['share_of_teacher_miou']:.1f} %" if r["share_of_teacher_miou"] is not None else "–"
        gap = f"{100 * r['gap_closed']:.0f} %" if r["gap_closed"] is not None else "–"
        vals = [run["val_miou"] for run in r["runs"]]
        lines.append(f"| {name} | {_pm(*_mean_sd(vals))} | {_pm(r['test_miou_mean'], r['test_miou_sd'])} | "
                     f"{_paired(r.get('vs_student'))} | {_pm(r['test_dice_mean'], r['test_dice_sd'])} | {share} | "
                     f"{gap} | {_negatives(r)} | {_benign_share(r['runs'])} |")
    if report.get("ablation"):
        lines += _table("What each term of CoCo DistillNet adds: the paired difference (same seed) between two "
                        "methods that differ in that term alone; validation and test in mIoU, the negatives and the "
                        "benign slides in percentage points of pixels / tissue called tumour (lower is better there). "
                        "Mean ± sd over the pairs, with the paired t-test's p; one pair gives the difference alone.",
                        ["term added", "with − without", "pairs", "Δ validation mIoU", "Δ test mIoU", "Δ negatives",
                         "Δ benign slides"])
        for row in report["ablation"]:
            lines.append(f"| {row['term']} | {row['with']} − {row['without']} | {row['pairs']} | "
                         f"{_delta(row['val_miou'])} | {_delta(row['test_miou'])} | "
                         f"{_delta(row['negatives'], 100)} | {_delta(row['benign_slides'], 100)} |")
    if report.get("gradient_balance"):
        lines += _table("How hard each term pulls: its weighted loss and, in brackets, the norm of its gradient on "
                        "the student's parameters over cross-entropy's, on the same 8 batches of the crop bank, for a "
                        "fresh student as training starts (paraphraser pre-trained, critic fresh) and for the "
                        "method's first trained seed. A term far below 1× barely moves the student; one far above "
                        "drowns the labels. For the trained student the terms reading the critic or a connector "
                        "(adversarial, factor transfer, the Gram's adapters) are left out: those modules are not "
                        "saved with it.", ["method", "fresh student", "trained student"])
        for name, row in report["gradient_balance"].items():
            lines.append(f"| {name} | {_balance(row['start'])} | {_balance(row['end'])} (seed {row['seed']}) |")
    e = report["efficiency"]
    lines += ["", "| network | params | GFLOPs (MACs) at 256² | CPU images/s at "
              f"{e['speed_size']}² ({e['threads']} threads) |", "|---|---|---|---|"]
    for role in ("teacher", "reference_teacher", "student"):
        if role not in e:
            continue
        r = e[role]
        lines.append(f"| {role} {r['model']} | {r['params'] / 1e6:.2f} M | {r['flops_256'] / 1e9:.2f} | "
                     f"{r['cpu_images_per_s']:.1f} |")
    if report.get("missing_runs"):
        lines += ["", f"Not run yet ({len(report['missing_runs'])}): {', '.join(report['missing_runs'])}. The same "
                  "command with the same `--workdir` trains them (finished runs are read back)."]
    lines += ["", f"Student / teacher: {100 * e['flops_ratio']:.1f} % of the FLOPs, "
              f"{e['cpu_speedup']:.1f}× the CPU speed (same run, interleaved timing)."]
    if "reference_teacher" in e:
        r = e["reference_teacher"]
        lines.append(f"Against the ResNet-50 U-Net teacher of earlier protocols: {100 * r['student_flops_ratio']:.1f} % "
                     f"of the FLOPs, {r['student_cpu_speedup']:.1f}× the CPU speed.")
    lines.append("")
    return "\n".join(lines)


def write_outputs(report: dict[str, Any], out: Path | None) -> str:
    from engine.atomic import write_report

    md = markdown(report)
    if out is not None:
        write_report(out, report, md)
    return md
