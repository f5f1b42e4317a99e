"""Matrix files: expansion of each design, override precedence, and rejection of invalid matrices."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from dimlab.ablation.axes import BACKBONE_ARGS
from dimlab.ablation.matrix import MatrixError, load_matrix

REPO_ROOT = Path(__file__).resolve().parents[2]
FLAG = BACKBONE_ARGS + "."
ALL_AXES = {
    "multi_scan": [4, 1],
    "long_skips": [True, False],
    "padding_tokens": [True, False],
    "local_enhancement": [True, False],
}


def _matrix(**extra) -> dict:
    return {"base": "../experiments/tiny.yaml", "output_dir": "out", **extra}


def test_leave_one_out_is_full_model_plus_one_row_per_removed_component(experiment, write_matrix):
    path = write_matrix(_matrix(axes=ALL_AXES, design="leave_one_out", overrides={"trainer.max_steps": 7}))
    matrix = load_matrix(path)
    names = [r.name for r in matrix.rows]
    assert names == ["full", "no_multi_scan", "no_long_skips", "no_padding_tokens", "no_local_enhancement"]
    full = matrix.row("full").overrides
    assert full == {
        "trainer.max_steps": 7,
        FLAG + "multi_scan": 4,
        FLAG + "long_skip": True,
        FLAG + "line_pad": True,
        FLAG + "cond_separator": True,
        FLAG + "local_enhance": True,
    }
    # Each leave-one-out row differs from the full model in exactly its component's flags.
    expected_diff = {
        "no_multi_scan": {"multi_scan": 1},
        "no_long_skips": {"long_skip": False},
        "no_padding_tokens": {"line_pad": False, "cond_separator": False},
        "no_local_enhancement": {"local_enhance": False},
    }
    for name, diff in expected_diff.items():
        row = matrix.row(name).overrides
        changed = {k[len(FLAG) :]: v for k, v in row.items() if full[k] != v}
        assert changed == diff, name
    assert all(r.base == experiment.resolve() for r in matrix.rows)


def test_leave_one_out_with_intermediate_values_names_them(experiment, write_matrix):
    axes = {"multi_scan": [4, 2, 1], "padding_tokens": [True, "line_pad_only"]}
    matrix = load_matrix(write_matrix(_matrix(axes=axes, design="leave_one_out")))
    assert [r.name for r in matrix.rows] == [
        "full",
        "multi_scan_2",
        "no_multi_scan",
        "padding_tokens_line_pad_only",
    ]
    row = matrix.row("padding_tokens_line_pad_only").overrides
    assert (row[FLAG + "line_pad"], row[FLAG + "cond_separator"]) == (True, False)


def test_full_design_is_every_combination_with_unique_names(experiment, write_matrix):
    matrix = load_matrix(write_matrix(_matrix(axes=ALL_AXES, design="full")))
    assert len(matrix.rows) == 16
    assert len({r.name for r in matrix.rows}) == 16
    combos = {tuple(r.axes[a] for a in ALL_AXES) for r in matrix.rows}
    assert combos == set(itertools.product(*ALL_AXES.values()))
    assert matrix.rows[0].name == "ms4_lsc_pt_lfe"
    assert matrix.rows[-1].name == "ms1_nolsc_nopt_nolfe"


def test_explicit_rows_fill_unnamed_axes_with_the_full_model_value(experiment, write_matrix):
    rows = [
        {"name": "paper_full"},
        {"name": "row_scan_only", "multi_scan": 1, "overrides": {"trainer": {"max_steps": 3}}},
    ]
    matrix = load_matrix(
        write_matrix(_matrix(axes=ALL_AXES, design="rows", rows=rows, overrides={"trainer.max_steps": 9}))
    )
    assert [r.name for r in matrix.rows] == ["paper_full", "row_scan_only"]
    scan_only = matrix.row("row_scan_only")
    assert scan_only.axes == {**{a: v[0] for a, v in ALL_AXES.items()}, "multi_scan": 1}
    assert scan_only.overrides["trainer.max_steps"] == 3  # the row's own overrides win
    assert matrix.row("paper_full").overrides["trainer.max_steps"] == 9


def test_design_may_be_the_list_of_rows_itself(experiment, write_matrix):
    matrix = load_matrix(write_matrix(_matrix(design=[{"name": "a", "long_skips": False}, {"name": "b"}])))
    assert matrix.design == "rows"
    assert matrix.row("a").overrides == {FLAG + "long_skip": False}
    assert matrix.row("b").overrides == {}


def test_extra_rows_set_only_their_own_axes_and_may_change_base(tmp_path, experiment, write_matrix):
    other = tmp_path / "experiments" / "other.yaml"
    other.write_text(experiment.read_text())
    extra = [
        {"name": "baseline", **{a: v[-1] for a, v in ALL_AXES.items()}},
        {"name": "other_base", "base": "../experiments/other.yaml", "overrides": {"data.batch_size": 4}},
    ]
    matrix = load_matrix(
        write_matrix(_matrix(axes={"long_skips": [True, False]}, design="full", extra_rows=extra))
    )
    assert [r.name for r in matrix.rows] == ["lsc", "nolsc", "baseline", "other_base"]
    baseline = matrix.row("baseline")
    assert baseline.extra and baseline.overrides[FLAG + "multi_scan"] == 1
    assert (
        baseline.overrides[FLAG + "line_pad"] is False
        and baseline.overrides[FLAG + "cond_separator"] is False
    )
    other_row = matrix.row("other_base")
    assert other_row.base == other.resolve()
    assert other_row.overrides == {"data.batch_size": 4}


def test_boolean_multi_scan_and_interpolation(experiment, write_matrix, monkeypatch):
    monkeypatch.setenv("DIMLAB_TEST_STEPS", "11")
    path = write_matrix(
        _matrix(
            axes={"multi_scan": [True, False]},
            design="leave_one_out",
            overrides={"trainer.max_steps": "${oc.decode:${oc.env:DIMLAB_TEST_STEPS,5}}"},
        )
    )
    matrix = load_matrix(path)
    assert matrix.axes == {"multi_scan": [4, 1]}
    assert matrix.row("full").overrides["trainer.max_steps"] == 11


def test_output_dir_and_wandb_settings(experiment, write_matrix):
    wandb = {"project": "p", "entity": "e", "mode": "offline"}
    matrix = load_matrix(write_matrix(_matrix(name="m1", design=[{"name": "a"}], wandb=wandb)))
    assert matrix.output_dir == Path("out")
    assert (matrix.wandb.project, matrix.wandb.entity, matrix.wandb.group, matrix.wandb.mode) == (
        "p",
        "e",
        "m1",
        "offline",
    )
    assert load_matrix(matrix.path, output_dir="elsewhere").output_dir == Path("elsewhere")
    disabled = load_matrix(write_matrix(_matrix(design=[{"name": "a"}], wandb={"enabled": False}), "d.yaml"))
    assert disabled.wandb is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (_matrix(axes={"multi_scans": [4]}, design="full"), "axes.multi_scans: unknown axis"),
        (_matrix(axes={"multi_scan": [4, 5]}, design="full"), "axes.multi_scan: invalid value 5"),
        (_matrix(axes={"long_skips": [True, "yes"]}, design="full"), "axes.long_skips: invalid value 'yes'"),
        (_matrix(axes={"long_skips": [True, True]}, design="full"), "axes.long_skips: duplicate values"),
        (_matrix(axes={"long_skips": []}, design="full"), "axes.long_skips: expected a non-empty list"),
        (_matrix(axes={"long_skips": [True]}, design="grid"), "design: unknown design 'grid'"),
        (_matrix(axes={}, design="full"), "axes: design 'full' needs at least one axis"),
        (_matrix(design="rows"), "rows: design `rows` needs a non-empty list"),
        (_matrix(design=[{"name": "a"}, {"name": "a"}]), "duplicate row name 'a'"),
        (
            _matrix(axes={"long_skips": [True, False]}, design="full", extra_rows=[{"name": "lsc"}]),
            "extra_rows: duplicate row name 'lsc'",
        ),
        (_matrix(design=[{"name": "a", "lfe": False}]), "design[0].lfe: unknown axis or row key 'lfe'"),
        (_matrix(design=[{"long_skips": False}]), "design[0]: every row needs a `name`"),
        (_matrix(design=[{"name": "a/b"}]), "row name 'a/b' must be"),
        (
            _matrix(design=[{"name": "a", "padding_tokens": "line"}]),
            "design[0].padding_tokens: invalid value",
        ),
        ({"design": "full", "axes": ALL_AXES}, "base: required key is missing"),
        (_matrix(axes=ALL_AXES), "design: required key is missing"),
        (
            {**_matrix(design="full", axes=ALL_AXES), "base": "missing.yaml"},
            "base: experiment file 'missing.yaml'",
        ),
        (
            _matrix(design=[{"name": "a"}], extra_rows=[{"name": "u", "base": "nope/uvit.yaml"}]),
            "extra_rows row 'u' base: experiment file 'nope/uvit.yaml' not found",
        ),
        (_matrix(design="full", axes=ALL_AXES, metric=["fid"]), "metric: unknown key"),
        (_matrix(design=[{"name": "a"}], wandb={"projet": "x"}), "wandb.projet: unknown key"),
        (_matrix(design=[{"name": "a"}], wandb={"entity": "x"}), "wandb.project: required"),
        (
            _matrix(design=[{"name": "a"}], wandb={"project": "x", "mode": "cloud"}),
            "wandb.mode: expected one of",
        ),
        (_matrix(design=[{"name": "a"}], metrics="fid"), "metrics: expected a list"),
        (_matrix(design="full", axes=ALL_AXES, rows=[{"name": "a"}]), "rows: only used with `design: rows`"),
    ],
)
def test_invalid_matrices_are_rejected_naming_the_key(experiment, write_matrix, content, message):
    path = write_matrix(content)
    with pytest.raises(MatrixError) as info:
        load_matrix(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_matrix_file_is_reported(tmp_path):
    with pytest.raises(MatrixError, match="not found"):
        load_matrix(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("name", "rows"), [("cifar10.yaml", 7), ("digits.yaml", None)])
def test_checked_in_matrices_load(name, rows):
    path = REPO_ROOT / "ablations" / name
    if not path.is_file():
        pytest.skip(f"{path} not written yet")
    try:
        matrix = load_matrix(path)
    except MatrixError as err:
        if "experiment file" in str(err):
            pytest.skip(f"base experiment not in the repo yet: {err}")
        raise
    if rows is not None:
        assert len(matrix.rows) == rows
    assert "mamba_baseline" in {r.name for r in matrix.rows}


CONSTRUCTOR_AXES = {
    "multi_scan": [4, 1],
    "long_skip": [True, False],
    "line_pad": [True, False],
    "cond_separator": [True, False],
    "local_enhance": [True, False],
}


def test_axes_are_the_constructor_arguments(experiment, write_matrix, recwarn):
    matrix = load_matrix(write_matrix(_matrix(axes=CONSTRUCTOR_AXES, design="leave_one_out")))
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]
    names = [r.name for r in matrix.rows]
    assert names == [
        "full",
        "no_multi_scan",
        "no_long_skip",
        "no_line_pad",
        "no_cond_separator",
        "no_local_enhance",
    ]
    full = matrix.row("full").overrides
    for axis in CONSTRUCTOR_AXES:
        row = matrix.row(f"no_{axis}").overrides
        assert {k[len(FLAG) :]: v for k, v in row.items() if full[k] != v} == {
            axis: CONSTRUCTOR_AXES[axis][1]
        }


def test_first_release_keys_warn_and_set_the_same_flags(experiment, write_matrix):
    old = {"multi_scan": [4, 1], "long_skips": [True, False], "padding_tokens": [True, False]}
    old["local_enhancement"] = [True, False]
    design = [{"name": "a", "padding_tokens": False, "long_skips": False}]
    with pytest.warns(DeprecationWarning, match="'padding_tokens' is now 'line_pad and cond_separator'"):
        before = load_matrix(write_matrix(_matrix(axes=old, design=design), name="old.yaml"))
    new_design = [{"name": "a", "line_pad": False, "cond_separator": False, "long_skip": False}]
    after = load_matrix(write_matrix(_matrix(axes=CONSTRUCTOR_AXES, design=new_design), name="new.yaml"))
    assert before.row("a").overrides == after.row("a").overrides


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (_matrix(axes={"long_skip": [True], "long_skips": [False]}, design="full"), "both set 'long_skip'"),
        (_matrix(design=[{"name": "a", "line_pad": False, "padding_tokens": True}]), "both set 'line_pad'"),
    ],
)
def test_one_flag_named_twice_is_rejected(experiment, write_matrix, content, message):
    with pytest.raises(MatrixError, match=message):
        load_matrix(write_matrix(content))


def test_a_design_row_replaces_the_listed_axes_it_overlaps(experiment, write_matrix):
    matrix = load_matrix(
        write_matrix(_matrix(axes=CONSTRUCTOR_AXES, design=[{"name": "a", "padding_tokens": False}]))
    )
    row = matrix.row("a")
    assert "line_pad" not in row.axes and "cond_separator" not in row.axes
    assert (row.overrides[FLAG + "line_pad"], row.overrides[FLAG + "cond_separator"]) == (False, False)
