"""The distiller: a frozen teacher, a student, connectors and weighted losses wired from a config.

``Distiller(config, teacher, student)`` checks its wiring when built — every loss exists, every
mapped argument is a parameter of the loss function, every required one is mapped, every source
names a real feature / connector — and then runs one tiny dry forward pass so shape mismatches are
reported at build time with the loss's name, not in the middle of training.

``forward(images, target, teacher=None)`` returns a dict of terms: each loss's ``loss*`` entries multiplied by its
weight, its other entries as they are (logged only), and ``total`` = the sum of the ``loss*``
entries. ``after_step()`` runs the critic's WGAN-GP update when the method is adversarial.

``teacher`` may carry the frozen teacher's stored outputs for the batch (a crop bank: feature name
→ tensor), and the teacher is then not run at all; nor is it run for a method that reads nothing
from it (the plain student).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from engine.distill.config import DistillConfig, DistillConfigError
from engine.distill.connectors import Paraphraser, create_connector
from engine.distill.losses import get_loss
from engine.distill.losses.adversarial import Discriminator, critic_loss
from engine.distill.losses.factor_transfer import paraphraser_reconstruction_loss
from engine.distill.recorders import FeatureRecorder
from engine.jobs import CancelToken, Progress
from engine.models import SegmentationModel

log = logging.getLogger(__name__)


class Distiller(nn.Module):
    """Student training objective with distillation; the module to optimise and (optionally) DDP-wrap."""

    def __init__(self, config: DistillConfig, teacher: SegmentationModel, student: SegmentationModel) -> None:
        super().__init__()
        self.config = config
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student = student
        self._rec_s = FeatureRecorder(student, student.feature_layers).attach()
        self._rec_t = FeatureRecorder(teacher, teacher.feature_layers).attach()
        self.connectors = nn.ModuleDict()
        self._losses: list[tuple[str, Callable[..., dict[str, Tensor]], float, dict[str, str], dict]] = []
        self.critic: Discriminator | None = None
        self._critic_opt: torch.optim.Optimizer | None = None
        self._last_logits: tuple[Tensor, Tensor] | None = None
        #: each returned term's sources (``student.…``, ``critic``, ``connector.…``), set by forward
        self.term_inputs: dict[str, tuple[str, ...]] = {}
        self._build()
        self.teacher_sources = self._teacher_sources()
        self._dry_run()

    # ----------------------------------------------------------------- building
    def _channels(self, source: str) -> int:
        net, _, feat = source.partition(".")
        model = {"student": self.student, "teacher": self.teacher}.get(net)
        if model is None or feat not in model.feature_layers:
            raise DistillConfigError(f"{self.config.method}: {source!r} is not a student./teacher. feature "
                                     f"(features: {', '.join(self.student.feature_layers)})")
        return model.feature_channels(feat)

    def _check_source(self, where: str, source: str) -> None:
        if source in ("target", "critic"):
            return
        kind, _, name = source.partition(".")
        if kind == "connector":
            if name not in self.connectors:
                raise DistillConfigError(f"{where}: no connector named {name!r} (declared: "
                                         f"{', '.join(self.connectors) or 'none'})")
            return
        self._channels(source)

    def _build(self) -> None:
        cfg = self.config
        for spec in cfg.connectors:
            self._check_source(f"connector {spec.name}", spec.input)
            if spec.kind == "paraphraser" and not spec.input.startswith("teacher."):
                raise DistillConfigError(f"{cfg.method}: paraphraser {spec.name!r} must read a teacher feature")
            kw = dict(spec.params)
            kw["in_channels"] = self._channels(spec.input)
            if "out_like" in kw:
                kw["out_channels"] = self._channels(kw.pop("out_like"))
            if "factor_like" in kw:
                kw["factor_channels"] = self._channels(kw.pop("factor_like"))
            try:
                self.connectors[spec.name] = create_connector(spec.kind, **kw)
            except (KeyError, TypeError) as exc:
                raise DistillConfigError(f"{cfg.method}: connector {spec.name!r}: {exc}") from exc
        for spec in cfg.losses:
            where = f"{cfg.method}: loss {spec.loss!r}"
            try:
                fn = get_loss(spec.loss)
            except KeyError as exc:
                raise DistillConfigError(f"{where}: {exc.args[0]}") from exc
            sig = inspect.signature(fn).parameters
            unknown = [a for a in [*spec.inputs, *spec.params] if a not in sig]
            if unknown:
                raise DistillConfigError(f"{where}: no argument(s) {', '.join(unknown)}; it takes {', '.join(sig)}")
            required = [n for n, p in sig.items() if p.default is inspect.Parameter.empty]
            unmapped = [n for n in required if n not in spec.inputs]
            if unmapped:
                raise DistillConfigError(f"{where}: argument(s) {', '.join(unmapped)} not mapped to a source")
            for src in spec.inputs.values():
                self._check_source(where, src)
                if src == "critic" and self.critic is None:
                    self._make_critic()
            self._losses.append((spec.loss, fn, spec.weight, dict(spec.inputs), dict(spec.params)))

    def _teacher_sources(self) -> frozenset[str]:
        """The teacher features this method reads (directly or through a connector)."""
        inputs = [src for spec in self.config.losses for src in spec.inputs.values()]
        inputs += [spec.input for spec in self.config.connectors]
        names = {src.partition(".")[2] for src in inputs if src.startswith("teacher.")}
        if self.critic is not None:
            names.add("logits")  # the critic tells teacher from student maps
        return frozenset(names)

    def _make_critic(self) -> None:
        c = self.config.critic
        widths = tuple(c.get("widths", (64, 128, 256, 512)))
        self.critic = Discriminator(self.student.classes, widths)
        betas = tuple(c.get("betas", (0.9, 0.99)))
        self._critic_opt = torch.optim.Adam(self.critic.parameters(), lr=float(c.get("lr", 1e-4)), betas=betas)

    def _dry_run(self) -> None:
        size = max(64, 2 * self.student.stride)
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                dev = self.student.head.weight.device
                self.to(dev)
                terms = self(torch.zeros(2, 3, size, size, device=dev),
                             torch.zeros(2, size, size, dtype=torch.long, device=dev))
        finally:
            self.train(was)
        log.debug("%s wiring checked: %s", self.config.method, ", ".join(terms))

    @property
    def network(self) -> SegmentationModel:
        """The model that training produces (the student)."""
        return self.student

    def close(self) -> None:
        """Remove the forward hooks this distiller put on the teacher and the student."""
        self._rec_s.detach()
        self._rec_t.detach()

    # ----------------------------------------------------------------- running
    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # the teacher is frozen, BN statistics included
        for c in self.connectors.values():
            if isinstance(c, Paraphraser) and not next(c.parameters()).requires_grad:
                c.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student and trainable connectors (not the teacher, frozen paraphrasers, or the critic)."""
        params = [p for p in self.student.parameters() if p.requires_grad]
        params += [p for p in self.connectors.parameters() if p.requires_grad]
        return params

    def ddp_ignored_names(self) -> list[str]:
        """Parameters and buffers DDP must leave alone (the critic has its own optimiser)."""
        return [n for n, _ in self.named_parameters() if n.startswith("critic.")] + [
            n for n, _ in self.named_buffers() if n.startswith("critic.")]

    def _resolve(self, source: str, target: Tensor, logits: dict[str, Tensor],
                 teacher: dict[str, Tensor] | None = None) -> object:
        if source == "target":
            return target
        if source == "critic":
            return self.critic
        kind, _, name = source.partition(".")
        if kind == "connector":
            spec = next(s for s in self.config.connectors if s.name == name)
            x = self._resolve(spec.input, target, logits, teacher)
            conn = self.connectors[name]
            return conn.encode(x) if isinstance(conn, Paraphraser) else conn(x)
        if name == "logits":
            return logits[kind]
        if kind == "teacher" and teacher is not None:
            return teacher[name]
        return (self._rec_s if kind == "student" else self._rec_t)[name]

    def _teacher_outputs(self, images: Tensor, stored: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
        """The teacher's features for the batch: stored ones (checked), a live pass, or none needed."""
        if not self.teacher_sources:
            return None
        if stored is not None:
            missing = self.teacher_sources - set(stored)
            if missing:
                raise DistillConfigError(f"{self.config.method}: the crop bank lacks teacher "
                                         f"feature(s) {', '.join(sorted(missing))}")
            return {k: v.detach() for k, v in stored.items()}
        with torch.no_grad():
            t_logits = self.teacher(images)
        return {**{n: self._rec_t[n] for n in self.teacher_sources if n != "logits"}, "logits": t_logits}

    def forward(self, images: Tensor, target: Tensor, teacher: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        t_out = self._teacher_outputs(images, teacher)
        s_logits = self.student(images)
        t_logits = t_out["logits"] if t_out is not None and "logits" in t_out else None
        logits = {"student": s_logits, "teacher": t_logits}
        self._last_logits = (s_logits.detach(), t_logits.detach()) if t_logits is not None else None
        terms: dict[str, Tensor] = {}
        total = s_logits.new_zeros((), dtype=torch.float32)
        for name, fn, weight, inputs, params in self._losses:
            args = {arg: self._resolve(src, target, logits, t_out) for arg, src in inputs.items()}
            try:
                out = fn(**args, **params)
            except (ValueError, RuntimeError) as exc:
                raise DistillConfigError(f"{self.config.method}: loss {name!r} failed: {exc}") from exc
            for key, val in out.items():
                self.term_inputs[key] = tuple(inputs.values())
                if key in terms:
                    raise DistillConfigError(f"{self.config.method}: two losses both return {key!r}")
                if key.startswith("loss"):
                    val = val * weight
                    total = total + val
                terms[key] = val
        terms["total"] = total
        return terms

    def after_step(self) -> dict[str, float]:
        """One critic (WGAN-GP) step on the last batch's logits; gradients averaged over processes."""
        if self.critic is None or self._last_logits is None or self._critic_opt is None:
            return {}
        s, t = self._last_logits
        self._critic_opt.zero_grad(set_to_none=True)
        out = critic_loss(self.critic, s, t, float(self.config.critic.get("gp_weight", 10.0)))
        out["loss_critic"].backward()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            for p in self.critic.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
        self._critic_opt.step()
        return {k: float(v.detach()) for k, v in out.items()}

    @staticmethod
    def _freeze(connectors: Iterable[nn.Module]) -> None:
        for c in connectors:
            c.eval()
            for p in c.parameters():
                p.requires_grad_(False)

    def prepare(self, images: Iterable[Tensor | tuple[Tensor, dict[str, Tensor]]], cancel: CancelToken | None = None,
                progress: Callable[[Progress], None] | None = None) -> dict[str, float]:
        """Pre-train the paraphrasers (unsupervised reconstruction of frozen teacher features), then freeze them."""
        paras = {n: c for n, c in self.connectors.items() if isinstance(c, Paraphraser)}
        steps = self.config.paraphraser_steps
        if not paras:
            return {}
        if steps <= 0:  # never a trainable random target: the factor stays a fixed random projection
            log.warning("%s: paraphraser not pre-trained (0 steps): its factor is a fixed random projection",
                        self.config.method)
            self._freeze(paras.values())
            return {}
        params = [p for c in paras.values() for p in c.parameters()]
        opt = torch.optim.Adam(params, lr=self.config.paraphraser_lr)
        inputs = {n: next(s.input for s in self.config.connectors if s.name == n) for n in paras}
        losses: list[float] = []
        it = iter(images)
        for step in range(steps):
            if cancel is not None and cancel.cancelled:
                break
            x = next(it)
            if isinstance(x, tuple):  # a crop bank: the teacher's features are stored
                feats = x[1]
            else:
                with torch.no_grad():
                    self.teacher(x)
                feats = self._rec_t.outputs()
            loss = sum(paraphraser_reconstruction_loss(c(feats[inputs[n].partition(".")[2]]),
                                                       feats[inputs[n].partition(".")[2]])["loss_paraphrase"]
                       for n, c in paras.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            opt.step()
            losses.append(float(loss.detach()))  # type: ignore[union-attr]
            if progress is not None:
                progress(Progress("paraphraser", step + 1, steps, {"loss_paraphrase": losses[-1]}))
        self._freeze(paras.values())
        k = max(1, len(losses) // 5)  # batches differ: compare the means of the first and last fifth
        first = sum(losses[:k]) / k if losses else float("nan")
        last = sum(losses[-k:]) / k if losses else float("nan")
        log.info("paraphraser reconstruction %.4f → %.4f (means of first/last %d of %d steps)", first, last, k, steps)
        return {"paraphraser_first": first, "paraphraser_last": last}
