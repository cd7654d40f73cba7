"""FedFTG's server step (fedftg-abstract.txt, fedftg-supplementary.txt), and FedDF's as its plain
special case.

After aggregation, per round: `iterations` times, train the conditional generator
`generator_steps` times on

    fidelity  CE(class-level ensemble of the round's local models (G(z, y)), y)
  - lambda_md  KL(ensemble || global)      (hard-sample mining: seek where they disagree)
  + lambda_div diversity(z, G(z, y)) / M   (M local models)

with labels y drawn in proportion to the participants' class counts (customized label
sampling); then take `model_steps` SGD steps of the global model on KL(ensemble || global) over
fresh generated samples. The class-level ensemble comes in two readings (`ensemble`): "class"
weighs each model's logit for class k by its share of class k; "label", as the reference code,
weighs each model's probabilities by its share of the sample's label y, and the fidelity is then
the share-weighted sum of the models' own CEs. With `per_model_steps`, as the reference code, a
generator update is M Adam steps, one per local model on its share of the fidelity and of the
mining (each model's KL to the global model, weighted by its share of the sample's label). FedDF:
the plain mean ensemble, uniform labels, no hard-sample mining.
The generator and its Adam state persist from round to round (`server_step.GeneratorStep`); with
`generator_ema` > 0 the fine-tuning's samples come from a moving average of the generator
(DFRD), which also persists.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..config import LEARNING_RATE, MOMENTUM, SIZE, TEMPERATURE, WEIGHT, check_fields, option
from ..evaluate import class_level_logits, class_shares
from ..models import place
from ..models.generators import ImageGenerator, to_model_input
from ..train import Stepper, round_decay
from ..train.objectives import kd_loss
from .local import LocalResult, RoundInfo, State, bn_statistics, cpu_state
from .registry import register_server_step
from .server_step import GeneratorStep


@dataclass(frozen=True)
class FedDFParams:
    """[feddf]: the fine-tuning of the global model on the generator's samples against the plain mean
    ensemble (FedDF; FedFTG's reference defaults: 5 global-model steps per iteration, SGD 0.01 on
    fedinv's per-sample KL)."""

    model_steps: int = option(5, "global-model updates per iteration", valid=SIZE)
    model_lr: float = option(0.01, "global-model SGD learning rate of the fine-tuning (the reference code's 0.1 "
                             "on a loss averaged over the classes as well as the batch is 0.1 / K on ours: "
                             "0.01 for 10 classes); decayed by [generator] lr_decay every round", valid=LEARNING_RATE)
    temperature: float = option(1.0, "KD temperature of the fine-tuning", valid=TEMPERATURE)
    per_model_steps: bool = option(False, "each generator update is one Adam step per local model on its part of "
                                          "the loss (its CE and hard-sample mining weighted by its share of each "
                                          "sample's label), as the reference code does, instead of one step on the "
                                          "whole ensemble's")
    bn_stats: str = option("batches", "the global model's BN running statistics after the fine-tuning: batches "
                           "(they follow the generated batches, as in the reference code's train mode), aggregate "
                           "(the aggregate's, i.e. the nodes' averaged real-data statistics, are put back) or eval "
                           "(the fine-tuning runs in eval mode: the aggregate's statistics normalize the generated "
                           "batches and stay)", choices=("batches", "aggregate", "eval"))
    generator_ema: float = option(0.0, "the fine-tuning draws its samples from an exponential moving average of "
                                       "the generator's weights, updated after every generator step with this "
                                       "decay and kept across rounds (DFRD's EMA generator); 0 = from the generator "
                                       "itself, as the reference code", valid=MOMENTUM)
    save_every: int = option(0, "append a batch of generated images (with the round's ensemble soft labels) to "
                                "OUT/generated.h5 every k rounds, for `fedinv view` (0 = never)", valid=SIZE)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class FTGParams(FedDFParams):
    """[ftg]: FedDF's fine-tuning, FedFTG's class-level ensemble and hard-sample mining."""

    ensemble: str = option("label", "the class-level ensemble the generator and the fine-tuning use: label "
                           "(each model's probabilities weighted by its share of the sample's label, and the "
                           "fidelity the share-weighted sum of the models' own CEs, as the reference code) or "
                           "class (each model's logit for class k weighted by its share of class k)",
                           choices=("class", "label"), before="class")
    lambda_md: float = option(1.0, "weight of hard-sample mining (maximize KL(ensemble || global))", valid=WEIGHT)



@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def label_distribution(label_counts: torch.Tensor) -> torch.Tensor:
    """[M, K] counts -> [K]: customized label sampling, p(y) proportional to the participants'
    total count of y. A class nobody holds is never drawn."""
    total = label_counts.double().sum(0)
    return (total / total.sum()).float()


def diversity_loss(noise: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """exp(-mean_ij ||z_i - z_j||^2_mean * |G_i - G_j|_mean): small when samples from distant
    noises are far apart (FedGen's and FedFTG's diversity term). noise [B, nz], output [B, ...]."""
    out = output.flatten(1)
    noise_dist = (noise[:, None, :] - noise[None, :, :]).pow(2).mean(-1)
    out_dist = (out[:, None, :] - out[None, :, :]).abs().mean(-1)
    return torch.exp(-(noise_dist * out_dist).mean())


def label_level_teacher(logits: torch.Tensor, shares: torch.Tensor,
                        y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, B, K] logits of M models, [M, K] class shares (columns sum to 1), [B] labels ->
    ([B, K] log-probabilities of sum_m w_m softmax(logits_m), [B] sum_m w_m CE(logits_m, y)) with
    w_m = model m's share of the sample's label y: the reference code's class-level ensemble."""
    w = shares.float()[:, y]  # [M, B]
    logp = logits.float().log_softmax(-1)  # in float32 also under autocast: the 1e-8 floor below
    mixture = (w[..., None] * logp.exp()).sum(0).clamp_min(1e-8).log()
    own_ce = -logp.gather(-1, y.expand(len(logits), -1)[..., None]).squeeze(-1)  # [M, B]
    return mixture, (w * own_ce).sum(0)


def generator_objective(teacher_logp: torch.Tensor, fidelity: torch.Tensor, global_logits: torch.Tensor,
                        noise: torch.Tensor, output: torch.Tensor, *, lambda_md: float, lambda_div: float,
                        num_models: int, md_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The generator's loss and its named parts (all [B]-means), from the teacher's [B, K]
    log-probabilities and its [B] fidelity CE (`ServerModels.teach`, or `teach_one`); the
    per-sample KL of hard-sample mining weighted by `md_weight` [B] when given."""
    fidelity = fidelity.mean()
    kl = F.kl_div(F.log_softmax(global_logits, 1), teacher_logp, reduction="none", log_target=True).sum(-1)
    md = kl.mean() if md_weight is None else (md_weight * kl).mean()
    div = diversity_loss(noise, output)
    loss = fidelity - lambda_md * md + lambda_div * div / num_models
    return {"loss": loss, "fidelity": fidelity.detach(), "hard_mining": md.detach(), "diversity": div.detach()}


@dataclass
class ServerModels:
    """The round's frozen local models and how to weigh them."""

    models: list[nn.Module]
    shares: torch.Tensor  # [M, K]
    label_p: torch.Tensor  # [K]
    by_label: bool = False  # weigh each model by its share of the sample's label (the reference code)

    def teach(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The ensemble on x labelled y, as `generator_objective`'s teacher: its [B, K]
        log-probabilities and its [B] fidelity CE."""
        logits = torch.stack([m(x) for m in self.models])
        if self.by_label:
            logp, fidelity = label_level_teacher(logits, self.shares, y)
        else:
            ensemble = class_level_logits(logits, self.shares)
            logp, fidelity = ensemble.log_softmax(-1), F.cross_entropy(ensemble, y, reduction="none")
        return {"teacher_logp": logp, "fidelity": fidelity}

    def teach_one(self, m: int, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model m alone on x labelled y (the reference code's generator steps), as
        `generator_objective`'s teacher: its [B, K] log-probabilities, its [B] CE weighted by w and w,
        its share of each sample's label. Over the models the weighted CEs sum to the label form's
        fidelity."""
        w = self.shares[m].float()[y]
        logp = self.models[m](x).float().log_softmax(-1)
        return {"teacher_logp": logp, "fidelity": w * -logp.gather(1, y[:, None]).squeeze(1), "md_weight": w}


Sampler = Callable[[], tuple[torch.Tensor, torch.Tensor]]


@register_server_step
class FedFTG(GeneratorStep):
    """FedFTG's server step: the class-level ensemble, customized label sampling, hard-sample mining."""

    name = "ftg"
    Params = FTGParams
    legacy = {k: k for k in ("model_steps", "model_lr", "temperature", "per_model_steps", "lambda_md", "ensemble",
                             "bn_stats", "generator_ema", "save_every")}

    def lambda_md(self) -> float:
        """The weight of hard-sample mining (FedDF has none)."""
        return self.params.lambda_md

    def new_generator(self) -> ImageGenerator:
        return ImageGenerator(self.gcfg.nz, self.info.num_classes, self.info.channels, self.info.image_size)

    def server_models(self, results: Sequence[LocalResult], device: torch.device) -> ServerModels:
        counts = torch.stack([r.label_counts for r in results])
        return ServerModels(self.local_models(results, device), class_shares(counts).float().to(device),
                            label_distribution(counts), by_label=self.params.ensemble == "label")

    def step(self, global_state: State, results: Sequence[LocalResult], state: dict[str, Any],
             rnd: RoundInfo) -> tuple[State, dict[str, Any], dict[str, float]]:
        """One round's server step; returns (new global state, new generator state, metrics)."""
        device, gcfg, p = rnd.device, self.gcfg, self.params
        g = self.load_generator(state, device).train()
        g_step = Stepper(self.generator_optimizer(g, state, rnd.round), device, rnd.amp_dtype)
        model = self.build()
        model.load_state_dict(global_state)
        # The global model is fine-tuned in train mode, as in the reference code: BN normalizes each
        # generated batch by its own statistics and its running statistics follow them. In eval
        # mode the gradients through BN scale with 1 / sqrt(running var): on the Fashion-MNIST
        # benchmark the fine-tuning went to NaN in round 1 at lr 0.1 (experiments/rounds/ftg_bn.py: so does KD
        # on real images at lr 0.1); bn_stats="eval" does it (the aggregate's statistics normalize
        # and stay), for the smaller step of the label form. Putting the old running statistics
        # back afterwards leaves them stale once the weights have moved far (there, 82.9% -> 64.8%
        # test accuracy at lr 0.1, against 82.5% when they follow). But statistics that follow
        # generated batches are not those of real data: bn_stats="aggregate" puts the aggregate's
        # back (worse over a run, in both benchmarks: docs/results.md).
        place(model, device).train(p.bn_stats != "eval")
        m_step = Stepper(torch.optim.SGD(model.parameters(), lr=round_decay(p.model_lr, gcfg.lr_decay, rnd.round)),
                         device, rnd.amp_dtype)
        server = self.server_models(results, device)

        def sample() -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.multinomial(server.label_p, gcfg.batch_size, replacement=True, generator=rnd.gen)
            z = torch.randn(gcfg.batch_size, gcfg.nz, generator=rnd.gen)
            return z.to(device), y.to(device)

        ema = self.ema_generator(g, state) if p.generator_ema else None
        source = ema if ema is not None else g  # what the fine-tuning's samples come from
        sums: dict[str, float] = {}
        for _ in range(gcfg.iterations):
            self.train_generator(g, g_step, model, server, sample, sums, ema)
            self.fine_tune(source, m_step, model, server, sample, sums)
        self.last_samples = self.generated_rows(source, server, sample) if p.save_every else None
        n_g, n_m = gcfg.iterations * gcfg.generator_steps, max(gcfg.iterations * p.model_steps, 1)
        metrics = {f"server_{k}": v / (n_m if k == "distill" else n_g) for k, v in sums.items()}
        new_state = cpu_state(model)
        if p.bn_stats == "aggregate":
            new_state.update(bn_statistics(global_state))  # the input state, untouched by the fine-tuning
        server_state = {"generator": cpu_state(g), "optimizer": g_step.optimizer.state_dict()}
        if ema is not None:
            server_state["generator_ema"] = cpu_state(ema)
        return new_state, server_state, metrics

    def ema_generator(self, g: nn.Module, state: dict[str, Any]) -> nn.Module:
        """The EMA copy of `g` as the last round left it (`g` itself before the first round)."""
        ema = copy.deepcopy(g).requires_grad_(False)
        if "generator_ema" in state:
            ema.load_state_dict(state["generator_ema"])
        return ema

    def train_generator(self, g: nn.Module, g_step: Stepper, model: nn.Module, server: ServerModels,
                        sample: Sampler, sums: dict[str, float], ema: nn.Module | None = None) -> None:
        """`generator_steps` updates of G on fidelity, hard-sample mining and diversity (with
        `per_model_steps`, each is one Adam step per local model on its share of them, on the same
        z and y: the reference code's); `ema`, when given, follows G's weights after every step (its
        buffers, e.g. BN statistics, are G's). `sums` gets each update's parts, summed over models."""
        gcfg, p = self.gcfg, self.params
        lambda_md = self.lambda_md()
        fine_tuning_mode = model.training
        model.requires_grad_(False).eval()  # as the reference code: its BN statistics are not the batches'
        if p.per_model_steps:  # one step per model, on its share of the fidelity and of the mining
            teachers = [functools.partial(server.teach_one, m) for m in range(len(server.models))]
        else:
            teachers = [server.teach]
        for _ in range(gcfg.generator_steps):
            z, y = sample()
            for teacher in teachers:
                with g_step.autocast():
                    out = g(z, y)
                    x = to_model_input(out, self.info)
                    parts = generator_objective(global_logits=model(x), noise=z, output=out, lambda_md=lambda_md,
                                                lambda_div=gcfg.lambda_div, num_models=len(server.models),
                                                **teacher(x, y))
                g_step.step(parts["loss"])
                if ema is not None:
                    ema_update(ema, g, p.generator_ema)
                for k, v in parts.items():  # per model: the diversity each term counts 1/M of, the rest summed
                    share = 1 / len(teachers) if k == "diversity" else 1.0
                    sums[k] = sums.get(k, 0.0) + share * float(v.detach())
        model.requires_grad_(True).train(fine_tuning_mode)

    def fine_tune(self, g: nn.Module, m_step: Stepper, model: nn.Module, server: ServerModels, sample: Sampler,
                  sums: dict[str, float]) -> None:
        """`model_steps` SGD steps of the global model on KL(ensemble || global) over G's samples."""
        p = self.params
        for _ in range(p.model_steps):
            z, y = sample()
            with m_step.autocast():
                with torch.no_grad():
                    x = to_model_input(g(z, y), self.info)
                    target = server.teach(x, y)["teacher_logp"]
                loss = kd_loss(model(x), target, p.temperature)
            m_step.step(loss)
            sums["distill"] = sums.get("distill", 0.0) + loss.item()

    @torch.no_grad()
    def generated_rows(self, g: nn.Module, server: ServerModels, sample: Sampler) -> tuple[torch.Tensor, ...]:
        """A batch of the generator's images as store rows (uint8 images, labels, ensemble log-probs)."""
        z, y = sample()
        g.eval()
        out = g(z, y)
        x = to_model_input(out, self.info)
        soft = server.teach(x, y)["teacher_logp"].float()
        images = ((out + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return images.cpu(), y.cpu(), soft.cpu()


@register_server_step
class FedDF(FedFTG):
    """FedDF: ensemble distillation on the generator's samples; the plain mean ensemble, uniform
    labels, no hard-sample mining."""

    name = "feddf"
    Params = FedDFParams
    legacy = {k: v for k, v in FedFTG.legacy.items() if k not in ("lambda_md", "ensemble")}

    def lambda_md(self) -> float:
        return 0.0

    def server_models(self, results: Sequence[LocalResult], device: torch.device) -> ServerModels:
        m, k = len(results), self.info.num_classes
        return ServerModels(self.local_models(results, device), torch.full((m, k), 1.0 / m).to(device),
                            torch.full((k,), 1.0 / k))
