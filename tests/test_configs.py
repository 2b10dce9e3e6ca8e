"""Every config group composes, and every option of it builds the object it describes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CONF, compose_cfg
from foldvision.models.backbone import create_classifier
from foldvision.models.optim import create_optimizer, create_scheduler
from foldvision.report.plots import lr_schedule
from foldvision.tasks import create_task


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if p.stem != "default")


def test_root_config_composes() -> None:
    cfg = compose_cfg(defaults=False)
    assert cfg.data.name == "demo_letters" and cfg.task.name == "multilabel" and cfg.cv.n_folds == 5
    assert cfg.model.name == "resnet10t" and cfg.seed == 42


@pytest.mark.parametrize("name", _options("optimizer"))
def test_optimizers(name: str) -> None:
    cfg = compose_cfg(f"optimizer={name}")
    opt = create_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(2))])  # foldvision's keys taken out
    assert isinstance(opt, torch.optim.Optimizer)


@pytest.mark.parametrize("name", _options("scheduler"))
def test_schedulers(name: str) -> None:
    """Every scheduler config gives, step by step, the learning rate its formula promises (stepped
    as training steps it: per batch or per epoch; plateau with a metric that never improves)."""
    cfg = compose_cfg(
        f"scheduler={name}", "scheduler.warmup_epochs=1" if name in ("cosine", "warmup_exp") else "seed=42"
    )
    lr, spe, epochs = 1e-3, 4, 12
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    sched = create_scheduler(cfg.scheduler, opt, steps_per_epoch=spe, max_epochs=epochs)
    assert (sched is None) == (name == "none")
    got = lr_schedule(cfg.scheduler, lr, spe, epochs)
    s = cfg.scheduler
    steps = np.arange(spe * epochs)
    epoch = steps // spe
    if name == "none":
        want = np.full(len(steps), lr)
    elif name == "cosine":  # linear warmup over one epoch of steps, then cosine to min_lr
        t = np.clip((steps - spe) / (spe * epochs - spe), 0, 1)
        want = np.where(steps < spe, lr * (steps + 1) / spe, s.min_lr + (lr - s.min_lr) * 0.5 * (1 + np.cos(np.pi * t)))
    elif name == "step":
        want = lr * s.gamma ** (epoch // s.step_size)
    elif name == "plateau":  # the first epoch sets the best; each patience + 1 flat epochs cut the lr
        want = np.maximum(lr * s.factor ** np.maximum(0, (epoch - 1) // (s.patience + 1)), s.min_lr)
    else:  # warmup_exp: start -> max over warmup_epochs, then (max - min) * decay^(epoch - warmup) + min
        w = s.warmup_epochs
        want = np.where(
            epoch < w,
            s.start_lr + (s.max_lr - s.start_lr) * epoch / w,
            (s.max_lr - s.min_lr) * s.decay ** (epoch - w) + s.min_lr,
        )
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_warmup_exp_schedule_matches_recipe() -> None:
    cfg = compose_cfg("scheduler=warmup_exp")
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=5e-5)
    sched = create_scheduler(cfg.scheduler, opt, 10, 20, devices=1)["scheduler"]
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-5) and lrs[5] == pytest.approx(5e-5)
    assert lrs[6] == pytest.approx((5e-5 - 1e-5) * 0.8 + 1e-5)


@pytest.mark.parametrize("name", _options("model"))
def test_models_build(name: str) -> None:
    named = ["model.name=resnet18"] if name == "timm" else []  # model=timm asks for model.name
    cfg = compose_cfg(f"model={name}", "model.pretrained=false", *named)
    model, dc = create_classifier(cfg.model, 3, image_size=None)
    assert len(dc["image_size"]) == 2 and len(dc["mean"]) == 3
    if name in ("test", "resnet10t", "repvgg_a0", "efficientnet_b0"):
        out = model.eval()(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
        assert out.shape == (1, 3)


def test_backbone_data_config_used_unless_overridden() -> None:
    cfg = compose_cfg("model=efficientnet_b3", "model.pretrained=false")
    _, dc = create_classifier(cfg.model, 2, image_size=None)
    assert dc["image_size"] == [288, 288] and dc["mean"][0] == pytest.approx(0.485)
    _, dc = create_classifier(cfg.model, 2, image_size=64)
    assert dc["image_size"] == [64, 64]


def test_grayscale_in_chans_1() -> None:
    cfg = compose_cfg("model.in_chans=1")
    model, dc = create_classifier(cfg.model, 2, image_size=32)
    assert dc["in_chans"] == 1 and len(dc["mean"]) == 1
    assert model(torch.zeros(2, 1, 32, 32, dtype=torch.uint8)).shape == (2, 2)


@pytest.mark.parametrize("name", _options("task"))
def test_tasks(name: str) -> None:
    cfg = compose_cfg(f"task={name}")
    task = create_task(cfg.task, ["a", "b", "c"])
    assert task.main_metric in task.metric_names


@pytest.mark.parametrize("group", ["augment", "trainer", "logger", "data", "cv", "callbacks", "debug"])
def test_every_option_composes(group: str) -> None:
    for name in _options(group):
        compose_cfg(f"{group}={name}")


@pytest.mark.parametrize("name", _options("augment"))
def test_augment_pipelines_run(name: str) -> None:
    import numpy as np

    from foldvision.data.transforms import train_transform

    cfg = compose_cfg(f"augment={name}")
    out = train_transform([16, 16], cfg.augment)(image=np.zeros((20, 30, 3), np.uint8))["image"]
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_pretrained_offline_message() -> None:
    from foldvision.errors import FoldvisionError
    from foldvision.models.backbone import create_backbone

    cfg = compose_cfg("model=resnet10t", "model.pretrained=true")
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        with pytest.raises(FoldvisionError, match="model.pretrained=false|model.weights_file"):
            create_backbone(cfg.model, 2)
    finally:
        del os.environ["HF_HUB_OFFLINE"]


def test_pretrained_unreachable_hub_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network: the message comes at once, not after huggingface_hub's minute of retries."""
    import time

    from foldvision.errors import FoldvisionError
    from foldvision.models.backbone import create_backbone

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # nothing listens there: refused at once
    t0 = time.time()
    with pytest.raises(FoldvisionError, match="model.pretrained=false"):
        create_backbone(compose_cfg("model=resnet10t", "model.pretrained=true").model, 2)
    assert time.time() - t0 < 15


def test_local_weights_file(tmp_path: Path) -> None:
    """model.weights_file: timm loads a local file through its pretrained path (offline Kaggle)."""
    import timm

    from foldvision.models.backbone import create_backbone

    src = timm.create_model("test_efficientnet", pretrained=False, num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    for pretrained in ("true", "false"):  # a file given is loaded whatever model.pretrained says
        cfg = compose_cfg(f"model.pretrained={pretrained}", f"model.weights_file={tmp_path / 'w.pth'}")
        model = create_backbone(cfg.model, 5)
        assert torch.equal(model.conv_stem.weight, src.conv_stem.weight)
        assert model.get_classifier().out_features == 5
    assert not torch.equal(
        create_backbone(cfg.model, 5, pretrained=False).conv_stem.weight, src.conv_stem.weight
    )  # predict.py


def test_fused_optimizer_auto() -> None:
    """optimizer.fused=auto: torch's fused kernel for CPU parameters (the class has one), none for a
    class without one, none where Lightning clips under a GradScaler, and `true` refused there."""
    from foldvision.errors import FoldvisionError

    params = [torch.nn.Parameter(torch.zeros(2))]
    for name in ("adamw", "adam", "sgd"):
        assert create_optimizer(compose_cfg(f"optimizer={name}").optimizer, params).defaults["fused"] is True
        cfg = compose_cfg(f"optimizer={name}")
        assert not create_optimizer(cfg.optimizer, params, scaled_clipping=True).defaults["fused"]
    assert not create_optimizer(compose_cfg("optimizer.fused=null").optimizer, params).defaults["fused"]
    rms = compose_cfg("optimizer._target_=torch.optim.RMSprop", "~optimizer.weight_decay")
    assert isinstance(create_optimizer(rms.optimizer, params), torch.optim.RMSprop)  # no fused kernel: none asked
    with pytest.raises(FoldvisionError, match="gradient_clip_val"):
        create_optimizer(compose_cfg("optimizer.fused=true").optimizer, params, scaled_clipping=True)
