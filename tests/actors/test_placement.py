import pytest
import torch

from actors.pool import split_partitions, worker_resources
from services.config import ServeSettings
from training.model.device import choose_placement


def test_cpu_when_no_cuda():
    p = choose_placement("auto", cuda_available=False)
    assert p.device == "cpu" and p.autocast_dtype is None and not p.channels_last


def test_cuda_prefers_bf16_and_falls_back_to_fp16():
    assert (
        choose_placement("auto", cuda_available=True, bf16_supported=True).autocast_dtype
        == torch.bfloat16
    )
    p = choose_placement("auto", cuda_available=True, bf16_supported=False)
    assert p.device == "cuda" and p.autocast_dtype == torch.float16 and p.channels_last


def test_explicit_choices():
    assert choose_placement("cpu", cuda_available=True).device == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA"):
        choose_placement("cuda", cuda_available=False)
    with pytest.raises(ValueError):
        choose_placement("tpu", cuda_available=False)


def test_this_machine_picks_what_torch_sees():
    assert choose_placement().device == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize(
    "gpus_per_worker, cluster_gpus, expect",
    [
        (None, 0, {"num_cpus": 1.0, "num_gpus": 0.0}),
        (None, 4, {"num_cpus": 1.0, "num_gpus": 1.0}),
        (0.5, 1, {"num_cpus": 1.0, "num_gpus": 0.5}),
        (0.0, 8, {"num_cpus": 1.0, "num_gpus": 0.0}),
    ],
)
def test_worker_resources(gpus_per_worker, cluster_gpus, expect):
    assert worker_resources(ServeSettings(gpus_per_worker=gpus_per_worker), cluster_gpus) == expect


def test_custom_resources_travel_with_the_worker_and_cli_flag():
    from dmguard import build_parser

    args = build_parser().parse_args(["serve", "--worker-resources", '{"detector": 1}'])
    settings = ServeSettings(worker_resources=args.worker_resources)
    assert worker_resources(settings, 0) == {
        "num_cpus": 1.0,
        "num_gpus": 0.0,
        "resources": {"detector": 1.0},
    }
    for bad in ('{"detector": 0}', '["detector"]', "detector", '{"detector": true}'):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "--worker-resources", bad])


def test_worker_resources_refuses_gpus_the_cluster_lacks():
    with pytest.raises(ValueError, match="GPUs"):
        worker_resources(ServeSettings(gpus_per_worker=1.0), 0)


@pytest.mark.parametrize(
    "partitions, workers, shares",
    [
        (4, 2, [(0, 2), (1, 3)]),
        (4, 1, [(0, 1, 2, 3)]),
        (3, 4, [(0,), (1,), (2,), ()]),
        (12, 5, [(0, 5, 10), (1, 6, 11), (2, 7), (3, 8), (4, 9)]),
    ],
)
def test_partitions_are_split_once_each(partitions, workers, shares):
    got = split_partitions(partitions, workers)
    assert got == shares
    assert sorted(p for share in got for p in share) == list(range(partitions))
