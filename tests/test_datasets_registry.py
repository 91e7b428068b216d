"""The public face of common.datasets: names, info, load's checks, data_dir, the command line."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from common import datasets
from common.datasets.__main__ import main


def test_registry_names_and_infos():
    assert datasets.names() == ["cifar10", "cifar100", "stl10", "imagefolder", "colordigits", "digits",
                                "placeddigits", "shapes"]
    for name in datasets.names():
        info = datasets.info(name)
        assert info.name == name and info.description and info.good_for and info.source
        assert dataclasses.is_dataclass(info)
        with pytest.raises(dataclasses.FrozenInstanceError):
            info.name = "other"
    assert datasets.info("cifar10").splits == {"train": 50_000, "test": 10_000}
    assert len(datasets.info("cifar100").classes) == 100
    assert datasets.info("stl10").splits["unlabeled"] == 100_000
    assert datasets.info("stl10").image_size == (96, 96)
    assert datasets.info("shapes").source == datasets.info("digits").source == "built-in"


def test_cifar100_class_lists_are_complete_and_sorted():
    from common.datasets.cifar import CIFAR100_CLASSES, CIFAR100_COARSE_CLASSES

    assert len(set(CIFAR100_CLASSES)) == 100 and list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)
    assert len(set(CIFAR100_COARSE_CLASSES)) == 20
    assert list(CIFAR100_COARSE_CLASSES) == sorted(CIFAR100_COARSE_CLASSES)


def test_unknown_name_and_split_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; choose one of: cifar10, cifar100"):
        datasets.load("mnist", "train")
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.info("mnist")
    with pytest.raises(ValueError, match="stl10 has no split 'val'; choose one of: train, test, unl"):
        datasets.load("stl10", "val")


def test_the_coarse_cifar100_loader_checks_its_split_before_any_download(monkeypatch, tmp_path):
    from common.datasets.cifar import load_cifar100_coarse

    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="has no split 'val'; choose one of: train, test"):
        load_cifar100_coarse("val", download=False)  # not "archive missing", not a KeyError


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert datasets.data_dir() == tmp_path
    monkeypatch.delenv("DATA_DIR")
    assert datasets.data_dir() == Path.home() / ".cache" / "ssl-three-ways" / "data"


def test_datasets_load_from_data_dir_by_default(monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "cifar-100-binary.tar.gz")):
        datasets.load("cifar100", "train", download=False)


def test_command_line_table(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "common.datasets"], capture_output=True, text=True, timeout=120,
        env={"DATA_DIR": str(tmp_path), "PATH": ""}, cwd=Path(__file__).parent.parent,
    )
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert "train 50,000, test 10,000" in rows["cifar10"] and " no " in rows["cifar10"]
    assert "unlabeled 100,000" in rows["stl10"] and "96x96" in rows["stl10"]
    assert " yes " in rows["digits"] and " yes " in rows["shapes"]
    assert rows["data"] == f"data dir: {tmp_path} (set $DATA_DIR to change it)"


def test_command_line_show(capsys):
    assert main(["show", "shapes", "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "test: images (1000, 32, 32, 3) uint8, labels (1000,) int64" in out
    assert "0: circle" in out and out.count(" 100\n") == 10
    assert "pixel mean (R, G, B):" in out


def test_command_line_show_reports_errors_in_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as caught:
        main(["show", "cifar10", "--split", "val"])
    assert caught.value.code == 1
    assert "error: cifar10 has no split 'val'" in capsys.readouterr().err


def test_command_line_show_of_an_image_folder_asks_for_its_root(capsys):
    for argv in (["show", "imagefolder"], ["show", "imagefolder", "--split", "train"]):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 1
        assert "error: imagefolder needs --root" in capsys.readouterr().err
