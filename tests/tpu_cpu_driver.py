"""Test-only driver of tests/test_tpu.py: trains foldvision's real pipeline (`run_cv`) with
`trainer=tpu` on torch-xla's CPU device. Run inside the `[tpu]` venv, with PJRT_DEVICE=CPU.

    python tests/tpu_cpu_driver.py RUN_DIR PROBE_JSON OVERRIDE...

The one test hack lives here: Lightning's XLAAccelerator.is_available() counts TPU chips on the PCI
bus (none on a CPU machine) and would refuse accelerator="tpu". A subclass that reports the single
PJRT CPU device `xla:0` is registered under the name "tpu", so the config keeps
`trainer.accelerator=tpu` and Lightning's own accelerator connector picks its real
SingleDeviceXLAStrategy, XLAPrecision and XLA checkpoint path. src/ is not patched.

A probe callback, added to the Trainer that foldvision builds, records where training really ran;
it is written to PROBE_JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch.accelerators import AcceleratorRegistry, XLAAccelerator

ROOT = Path(__file__).resolve().parents[1]


class CPUXLAAccelerator(XLAAccelerator):
    """XLAAccelerator over torch-xla's PJRT CPU device (xla:0): one device, always available."""

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def auto_device_count() -> int:
        return 1

    @staticmethod
    def parse_devices(devices):
        return 1

    @staticmethod
    def get_parallel_devices(devices):
        return [torch.device("xla", 0)]


def main(run_dir: str, probe_file: str, overrides: list[str]) -> None:
    import logging

    import lightning.pytorch as pl
    from hydra import compose, initialize_config_dir

    import foldvision.cv as cv
    from foldvision.cv import run_cv

    AcceleratorRegistry.register("tpu", CPUXLAAccelerator, description="test: XLA on PJRT CPU", override=True)
    # Lightning also logs "TPU available: ..." through the base XLAAccelerator, which counts chips with
    # torch_xla's TPU helper; on a machine with no TPU and TPU_SKIP_MDS_QUERY=1 that raises TypeError
    # (the TPU version it reads is None) instead of answering 0. 0 chips is the truth here.
    from torch_xla._internal import tpu

    tpu.num_available_devices = lambda: 0

    probe: dict = {"train": [], "val": []}

    class Probe(pl.Callback):
        def _record(self, key, trainer, pl_module, batch) -> None:
            probe[key].append(
                {
                    "param_device": next(pl_module.parameters()).device.type,
                    "batch_device": batch[0].device.type,
                    "strategy": type(trainer.strategy).__name__,
                    "accelerator": [c.__name__ for c in type(trainer.accelerator).__mro__],
                    "precision": type(trainer.precision_plugin).__name__,
                    "checkpoint_io": [c.__name__ for c in type(trainer.strategy.checkpoint_io).__mro__],
                }
            )

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._record("train", trainer, pl_module, batch)

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
            self._record("val", trainer, pl_module, batch)

    real_build = cv.build_trainer

    def build_trainer(*args, **kwargs):  # foldvision's own Trainer, plus the probe
        trainer = real_build(*args, **kwargs)
        trainer.callbacks.append(Probe())
        return trainer

    cv.build_trainer = build_trainer  # the name cv.train_fold calls (imported at cv's top)

    logging.basicConfig(
        level=logging.INFO, format="%(name)s: %(message)s", force=True
    )  # foldvision's log (device line)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    probe["oof_main_metric"] = run_cv(cfg, run_dir)
    Path(probe_file).write_text(json.dumps(probe, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
