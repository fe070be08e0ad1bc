"""One epoch of pretraining on tiny real-data copies in their own formats, as a user would start it.

The experiment configs of the paper (``experiment=cifar_fs|mini_imagenet``) with a tiny copy written in
a format other than our historical one, a narrow ResNet of width 4 and 8×8 images: the data is detected,
decoded once, cached, and a checkpoint with its record comes out.
"""

from __future__ import annotations

import pytest
from conftest import compose_config
from test_real_data_formats import write_cifar_pickles, write_mini_cache_pickles

from freeenergy.pretrain.trainer import run_pretraining
from freeenergy.records.checkpoints import iter_checkpoints

pytestmark = pytest.mark.filterwarnings("ignore:.*other than 600 images")  # tiny copies: 3 images per class


@pytest.mark.parametrize(
    "experiment, write, fmt",
    [("cifar_fs", write_cifar_pickles, "pickles"), ("mini_imagenet", write_mini_cache_pickles, "cache_pickles")],
)
def test_one_epoch_of_pretraining_on_a_tiny_copy(tmp_path, capsys, one_thread, experiment, write, fmt):
    write(tmp_path / "copy")
    cfg = compose_config(
        [
            f"experiment={experiment}",
            f"data.root={tmp_path / 'copy'}",
            "data.image_size=8",
            "model=resnet_narrow",
            "model.width=4",
            "train.epochs=1",
            "train.checkpoint_epochs=[1]",
            "train.batch_size=32",
            "train.augment.padding=2",
            "progress=false",
            "device=cpu",
            f"paths.runs={tmp_path / 'runs'}",
            f"paths.data_cache={tmp_path / 'cache'}",
        ]
    )
    run_dir = run_pretraining(cfg)
    assert f"as data.format={fmt} " in capsys.readouterr().out
    (checkpoint,) = iter_checkpoints(tmp_path / "runs")
    assert checkpoint.run_dir == run_dir and checkpoint.epoch == 1 and checkpoint.model_path.exists()
    assert (tmp_path / "copy" / "cache_8.pt").exists()


@pytest.mark.parametrize("experiment", ["cifar_fs", "mini_imagenet"])
def test_the_format_and_the_cache_folder_do_not_change_a_run_s_identity(tmp_path, experiment):
    from freeenergy.pretrain.config import run_identity

    base = run_identity(compose_config([f"experiment={experiment}"]))
    moved = compose_config([f"experiment={experiment}", "data.format=pickles", f"data.cache_dir={tmp_path}"])
    assert run_identity(moved) == base
    assert run_identity(compose_config([f"experiment={experiment}", "data.image_size=16"])) != base
