"""Image folders on a local Ray cluster (`ray.init(num_cpus=2)`): the pixels of a local run,
an actor killed mid-run, a broken file reported like the local batch does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data
from tilewise.cli import main

ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install 'tilewise[ray]'")

MODEL = "builtin:magic-kernel-sharp-2x"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def photos(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    astronaut = data.astronaut()
    for index in range(count):
        y = 20 * index
        Image.fromarray(astronaut[y : y + 48, 150:214]).save(folder / f"photo{index:02d}.png")
    return folder


def test_a_folder_on_ray_gives_the_local_files(cluster, tmp_path):
    source = photos(tmp_path / "in", 6)
    assert main(["upscale", str(source), "-o", str(tmp_path / "local"), "--model", MODEL, "-q"]) == 0
    code = main(["upscale", str(source), "-o", str(tmp_path / "ray"), "--model", MODEL, "-q", "--ray"])
    assert code == 0
    local = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert local == sorted(p.name for p in (tmp_path / "ray").iterdir()) and len(local) == 6
    for name in local:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def test_an_actor_killed_mid_run_still_gives_every_file(cluster, tmp_path):
    from tilewise import distributed
    from tilewise.engine import UpscaleOptions

    source = photos(tmp_path / "in", 8)
    jobs = [(path, tmp_path / "out" / path.name) for path in sorted(source.iterdir())]
    killed = []

    def kill_one(result, pool):
        if not killed:
            killed.append(pool.actors[0])
            cluster.kill(pool.actors[0])  # no restart: its files must go to another actor

    pool_seen = []

    def watch(result, pool):
        pool_seen.append(pool)
        kill_one(result, pool)

    results = distributed.upscale_files(jobs, MODEL, None, UpscaleOptions(device="cpu"), actors=2, on_result=watch)
    assert killed and pool_seen[-1].retried >= 1, "the kill hit an actor with work in flight"
    assert sorted(Path(r.destination).name for r in results) == sorted(p.name for p in source.iterdir())
    assert all(r.error is None for r in results)
    assert main(["upscale", str(source), "-o", str(tmp_path / "local"), "--model", MODEL, "-q"]) == 0
    for path in sorted((tmp_path / "local").iterdir()):
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "out" / path.name)), np.asarray(Image.open(path)), path.name
        )
    assert not list((tmp_path / "out").glob(".tilewise-*")), "no temporary file left behind"


def test_a_broken_file_is_reported_and_the_rest_written(cluster, tmp_path, capsys):
    source = photos(tmp_path / "in", 3)
    whole = (source / "photo00.png").read_bytes()
    (source / "broken.png").write_bytes(whole[: len(whole) // 3])
    code = main(["upscale", str(source), "-o", str(tmp_path / "out"), "--model", MODEL, "--ray", "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert [line for line in err.splitlines() if line.startswith("tilewise: error:")] == [
        line for line in err.splitlines() if "broken.png" in line and line.startswith("tilewise: error:")
    ]
    assert err.strip().splitlines()[-1] == "tilewise: 3 written, 1 failed"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["photo00.png", "photo01.png", "photo02.png"]
    assert main(["upscale", str(source), "-o", str(tmp_path / "out"), "--model", MODEL, "--ray", "-q",
                 "--skip-existing"]) == 1  # fmt: skip
    assert "0 written, 1 failed, 3 skipped" in capsys.readouterr().err


def test_a_video_on_ray_gives_the_local_video(cluster, tmp_path):
    """Two segments on two actors, each warmed up before its first frame: with feature feedback
    the frames equal one local run (tests/test_video_segments.py checks them before encoding);
    the files agree within the encoder's own run-to-run variation (x264 gave other bytes for the
    same frames in two runs here), and timing and audio are kept."""
    import av
    from clips import describe_video, make_video

    source = make_video(tmp_path / "clip.mp4", frames=40, fps=12)
    common = [str(source), "--model", "builtin:paragonsr2-realtime-2x", "--temporal", "feedback", "-q"]
    assert main(["upscale-video", *common, "-o", str(tmp_path / "local.mp4")]) == 0
    code = main(["upscale-video", *common, "-o", str(tmp_path / "ray.mp4"), "--ray", "--ray-actors", "2"])
    assert code == 0
    local, distributed_ = describe_video(tmp_path / "local.mp4"), describe_video(tmp_path / "ray.mp4")
    assert local == distributed_ and local["frames"] == 40 and local["audio"]

    def frames(path):
        with av.open(str(path)) as container:
            return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]

    for a, b in zip(frames(tmp_path / "local.mp4"), frames(tmp_path / "ray.mp4")):
        difference = np.abs(a.astype(int) - b.astype(int))
        assert difference.max() <= 12 and difference.mean() < 0.5, (difference.max(), difference.mean())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "local.mp4", "ray.mp4"], "no parts left"


def test_a_video_actor_killed_mid_run_still_gives_the_whole_video(cluster, tmp_path):
    from clips import describe_video, make_video
    from tilewise import distributed
    from tilewise.engine import UpscaleOptions, VideoOptions

    source = make_video(tmp_path / "clip.mp4", frames=48, fps=12)
    options = VideoOptions(upscale=UpscaleOptions(device="cpu", output_device="cpu"), temporal="stabilize")
    killed, pools = [], []

    def kill_one(result, pool):
        pools.append(pool)
        if not killed:
            killed.append(pool.actors[0])
            cluster.kill(pool.actors[0])  # it still holds a segment: that segment goes to the other actor

    report = distributed.upscale_video(
        source, tmp_path / "up.mp4", MODEL, None, options, actors=2, segments_per_actor=2, on_result=kill_one
    )
    assert killed and pools[-1].retried >= 1
    assert report.frames == 48 and describe_video(tmp_path / "up.mp4")["frames"] == 48
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "up.mp4"], "no parts left behind"
