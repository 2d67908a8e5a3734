"""The round's training objectives, built on the distiller of ``engine.distill``.

:class:`FinetuneObjective` is a distillation method's config (``coco-full`` by default) run by the
ordinary :class:`~engine.distill.distiller.Distiller`, with two terms taken out and replaced by
their partial-label versions:

- the config's ``segmentation`` loss becomes :func:`~engine.finetune.losses.partial_label_loss`
  (CE + Dice on the pixels a pathologist reviewed; the rest ignored), same weight and Dice weight;
- its pixel ``kd`` loss becomes :func:`~engine.finetune.losses.masked_kd_loss` on the *unlabelled*
  pixels only (where there is a correction, the correction is the target, not the teacher).

Every other term (CoCo, factor transfer with its paraphraser, adversarial critic) runs as the
config says, on every patch. :class:`PartialSupervised` adapts a teacher to the corrections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

from torch import Tensor, nn

from engine.distill.config import DistillConfig, load_config
from engine.distill.distiller import Distiller
from engine.distill.recorders import FeatureRecorder
from engine.finetune.losses import IGNORE, masked_kd_loss, partial_label_loss
from engine.finetune.loop import RoundOutOfMemory, oom_hint
from engine.jobs import CancelToken, Progress
from engine.oom import Backoff
from engine.training.trainer import SupervisedObjective


def finetune_config(method: str = "coco-full", paraphraser_steps: int | None = None) -> DistillConfig:
    """A distillation method's config, its paraphraser pre-training shortened if asked."""
    config = load_config(method)
    if paraphraser_steps is not None:
        config = replace(config, paraphraser_steps=int(paraphraser_steps))
    return config


class PartialSupervised(SupervisedObjective):
    """CE + Dice on labelled pixels only: adapts a teacher to the corrections."""

    loss = staticmethod(partial_label_loss)


class FinetuneObjective(nn.Module):
    """Student objective of a round: partial-label supervision + distillation (see module doc)."""

    def __init__(self, config: DistillConfig, teacher: nn.Module, student: nn.Module) -> None:
        super().__init__()
        seg = [s for s in config.losses if s.loss == "segmentation"]
        kd = [s for s in config.losses if s.loss == "kd"]
        self.seg_weight = seg[0].weight if seg else 1.0
        self.dice_weight = float(seg[0].params.get("dice_weight", 1.0)) if seg else 1.0
        self.kd_weight = kd[0].weight if kd else 0.0
        self.kd_temperature = float(kd[0].params.get("temperature", 1.0)) if kd else 1.0
        rest = tuple(s for s in config.losses if s.loss not in ("segmentation", "kd"))
        self.method = config.method
        self.distiller = Distiller(replace(config, losses=rest), teacher, student)
        self._rec_s = FeatureRecorder(student, {"logits": student.feature_layers["logits"]}).attach()
        self._rec_t = FeatureRecorder(teacher, {"logits": teacher.feature_layers["logits"]}).attach()

    @property
    def network(self) -> nn.Module:
        return self.distiller.student

    @property
    def student(self) -> nn.Module:
        return self.distiller.student

    def forward(self, images: Tensor, target: Tensor) -> dict[str, Tensor]:
        terms = self.distiller(images, target)
        s_logits, t_logits = self._rec_s["logits"], self._rec_t["logits"]
        total = terms.pop("total")
        for key, val in partial_label_loss(s_logits, target, self.dice_weight).items():
            terms[key] = val * self.seg_weight
            total = total + terms[key]
        if self.kd_weight:
            kd = masked_kd_loss(s_logits, t_logits, target == IGNORE, self.kd_temperature)["loss_kd"]
            terms["loss_kd"] = kd * self.kd_weight
            total = total + terms["loss_kd"]
        terms["total"] = total
        return terms

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.distiller.trainable_parameters()

    def after_step(self) -> dict[str, float]:
        return self.distiller.after_step()

    def prepare(self, images: Iterable[Tensor] | Callable[[int], Iterable[Tensor]],
                cancel: CancelToken | None = None, progress: Callable[[Progress], None] | None = None,
                batch: int = 1, on_backoff: Callable[[int], None] | None = None) -> dict[str, float]:
        """Pre-train the paraphrasers on ``images``: the batches, or a function from a batch size to
        them (``batch`` first). With a function, a pre-training that runs out of (GPU or CPU)
        memory starts over from where it started with half the batch, down to one patch
        (``on_backoff(size)`` is told each new size); then :class:`~engine.oom.OutOfMemory`."""
        if not callable(images):
            return self.distiller.prepare(images, cancel, progress)
        connectors = self.distiller.connectors
        start = {k: v.detach().clone() for k, v in connectors.state_dict().items()}

        def attempt(size: int) -> dict[str, float]:
            try:
                return self.distiller.prepare(images(size), cancel, progress)
            except Exception:
                connectors.load_state_dict(start)  # the retry starts where this one did
                raise

        device = next(self.distiller.student.parameters()).device
        return Backoff(batch, f"paraphraser: out of memory even with a batch of one patch; {oom_hint(device)}",
                       on_backoff, label="paraphraser", error=RoundOutOfMemory).call(attempt)

    def close(self) -> None:
        self._rec_s.detach()
        self._rec_t.detach()
        self.distiller.close()


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy with no gradients, in eval mode (the "teacher" of a round without one)."""
    import copy

    twin = copy.deepcopy(model).eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


__all__ = ["FinetuneObjective", "PartialSupervised", "finetune_config", "frozen_copy"]
