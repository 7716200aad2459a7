"""Study files: every shipped study parses; bad files are refused naming the key and the nearest name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ablate.study import StudyError, load_study, parse_study

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))

GOOD = {
    "name": "s",
    "base": {"model": "resmasknet_tiny", "data": "generated:n=140"},
    "variants": {"on": {}, "off": {"masks.enabled": False}},
    "baseline": "off",
    "seeds": [0, 1],
}


def bad(**changes):
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    for key, value in changes.items():
        node = raw
        parts = key.split("/")
        for p in parts[:-1]:
            node = node[p]
        if value is KeyError:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value
    return raw


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_shipped_studies_parse(path):
    study = load_study(path)
    # each shipped study has a name matching its file and, in a grid, every variant x every seed
    assert study.name == path.stem
    if study.mode == "grid":
        assert len(study.cells) == len(study.variants) * len(study.seeds)
        assert study.baseline in [v.name for v in study.variants]


def test_good_study_cells_are_paired_by_seed():
    study = parse_study(GOOD)
    # the same seeds for every variant
    assert study.cells == [("on", 0), ("on", 1), ("off", 0), ("off", 1)]


@pytest.mark.parametrize("changes, message", [
    ({"variantz": {}}, "unknown key 'variantz'.*did you mean 'variants'"),
    ({"base/modle": "x"}, "unknown key 'modle' in base.*did you mean 'model'"),
    ({"base/model": "resmasknet_cpv"}, "did you mean 'resmasknet_cpu'"),
    ({"variants": {"on": {"mask2.activaton": "sigmoid"}}}, "mask2.activaton"),
    ({"variants": {"on": {"mask2.activation": "relu"}}}, "variants.on: mask2.activation='relu'"),
    ({"variants": {"on": {"train.lrr": 0.1}}}, "train.lrr.*did you mean 'train.lr'"),
    ({"baseline": "nope"}, "baseline 'nope' is not a variant"),
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"seeds": [1, 1]}, "repeats"),
    ({"mode": "sweep"}, "mode 'sweep'"),
    ({"seeds": KeyError}, "missing required key 'seeds'"),
    ({"objectives": [{"metric": "f1"}]}, "objectives\\[0\\].metric='f1'"),
])
def test_bad_study_files_are_refused(changes, message):
    # the error names the file, the key and, for a typo, the nearest valid name
    with pytest.raises(StudyError, match=message):
        parse_study(bad(**changes), "bad.yaml")


def test_search_study_validation():
    raw = {"name": "s", "mode": "search", "base": {"model": "resmasknet_tiny"}, "seeds": [0],
           "search": {"space": {"mask1.depth": {"int": [1, 9]}}}}
    # a search range that leaves the allowed depths is refused when the study is read
    with pytest.raises(StudyError, match="mask1.depth"):
        parse_study(raw)
    raw["search"]["space"] = {"mask1.depth": {"int": [1, 2]}}
    raw["objectives"] = ["val_acc", "params"]
    raw["search"]["pruner"] = "median"
    # multi-objective studies cannot prune
    with pytest.raises(StudyError, match="pruning needs a single objective"):
        parse_study(raw)


def test_unset_data_variable_is_named(monkeypatch):
    monkeypatch.delenv("FER2013", raising=False)
    study = load_study("fer_per_stage")
    # a study on FER2013 says which variable to set
    with pytest.raises(StudyError, match="FER2013 is not set"):
        study.resolved("data")


def test_yaml_errors_name_the_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    # malformed YAML is refused with the file named
    with pytest.raises(StudyError, match="broken.yaml: not valid YAML"):
        load_study(p)


def test_rope_and_common_random_numbers():
    study = parse_study(GOOD)
    # defaults: a 0.5-point region of practical equivalence, common random numbers on
    assert study.rope == 0.5 and study.crn is True
    study = parse_study({**GOOD, "rope": 1, "common_random_numbers": False})
    # both keys are read from the file (rope as a float)
    assert study.rope == 1.0 and isinstance(study.rope, float) and study.crn is False


@pytest.mark.parametrize("changes, message", [
    ({"rope": -1}, "rope=-1 must be a number >= 0"),
    ({"rope": "wide"}, "rope='wide' must be a number >= 0"),
    ({"rope": True}, "rope=True must be a number"),
    ({"common_random_numbers": "yes"}, "common_random_numbers='yes' must be true or false"),
    ({"base/train": {"epochs": "three"}}, "base.train: epochs='three' must be an integer"),
    ({"base/train": {"lr": -1}}, "base.train: lr=-1 must be a number"),
    ({"variants": {"on": {"train.batch_size": 0}}}, "variants.on: batch_size=0 must be an integer"),
    ({"tiny": {"trian": {}}}, "unknown key 'trian' in tiny.*did you mean 'train'"),
])
def test_bad_values_are_refused_when_the_file_is_read(changes, message):
    # every value is checked when the study is read, before anything runs: the file and the key are named
    with pytest.raises(StudyError, match=message):
        parse_study(bad(**changes), "bad.yaml")


def test_a_name_is_found_in_the_current_folder_first_then_the_checkout_then_the_package(tmp_path, monkeypatch):
    import ablate.study as study_module

    monkeypatch.chdir(tmp_path)
    # from a folder without studies/, a shipped name comes from the checkout's studies/
    assert Path(load_study("quickstart").path).resolve() == STUDIES[0].parent.resolve() / "quickstart.yaml"
    # a studies/ folder of the current directory wins by name
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "quickstart.yaml").write_text(yaml.safe_dump({**GOOD, "name": "quickstart"}))
    assert Path(load_study("quickstart").path).resolve() == (tmp_path / "studies" / "quickstart.yaml").resolve()
    # without a checkout (an installed package), the packaged copy answers
    packaged = tmp_path / "pkg" / "_studies"
    packaged.mkdir(parents=True)
    (packaged / "onlypackaged.yaml").write_text(yaml.safe_dump({**GOOD, "name": "onlypackaged"}))
    monkeypatch.setattr(study_module, "PACKAGED_STUDIES", packaged)
    assert load_study("onlypackaged").name == "onlypackaged"


def test_an_unknown_study_is_refused_naming_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a name that no folder has: the error lists the names that exist
    known = r"study 'nosuch' not found \(a path, or a name in studies/: .*quickstart"
    with pytest.raises(FileNotFoundError, match=known):
        load_study("nosuch")
    # a path that does not exist is not looked up by name
    with pytest.raises(FileNotFoundError, match=r"study 'nosuch.yaml' not found \(no such file\)"):
        load_study("nosuch.yaml")
