"""YAML at the boundary: what a document may spell out (aliases), how deep it may nest, and the one line
every refusal ends in — for config files and ``--set`` alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnbp.errors import UserError
from cnnbp.yamlio import MAX_ALIAS_VALUES, MAX_DEPTH, apply_override, load_yaml_text, read_yaml

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=60)


def bomb(levels: int, fanout: int) -> str:
    """The classic alias bomb: level i is a list of ``fanout`` aliases of level i−1, so the last level
    spells out to fanout**levels strings."""
    lines = [f"l0: &l0 [{', '.join(['x'] * fanout)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]")
    return "\n".join(lines) + "\n"


def spelled_out(levels: int, fanout: int) -> int:
    """Values of :func:`bomb` once every alias is spelled out: the root mapping, its keys, and level i
    holding one list node plus fanout copies of level i−1 (level 0: fanout strings)."""
    size = [1 + fanout]
    for _ in range(1, levels):
        size.append(1 + fanout * size[-1])
    return 1 + levels + sum(size)


def test_an_alias_bomb_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb(9, 9), encoding="utf-8")  # 468 bytes, 4.9·10⁸ values spelled out
    assert path.stat().st_size < 500
    with pytest.raises(UserError) as e:
        read_yaml(path)
    total, written = spelled_out(9, 9), written_out(9, 9)
    assert (total, written) == (490_329_064, 28)
    assert str(e.value) == (
        f"{path}: invalid YAML at line 1, column 1: its aliases (*name) would spell it out to {total:,} "
        f"values, {total - written:,} more than written (at most {MAX_ALIAS_VALUES:,} more are allowed)"
    )


def written_out(levels: int, fanout: int) -> int:
    """The values :func:`bomb` writes: the root, its keys, one list per level and level 0's strings (an
    alias is the value it names, met again)."""
    return 1 + 2 * levels + fanout


def test_the_counts_on_a_small_bomb() -> None:
    # l0: [x, x, x], l1: [*l0, *l0, *l0]: written root, 2 keys, 2 lists, 3 strings = 8 values; spelled out
    # root, 2 keys, l0 (1 + 3) and l1 (1 + 3 × 4) = 20
    assert (spelled_out(2, 3), written_out(2, 3)) == (20, 8)
    assert load_yaml_text(bomb(2, 3))["l1"] == [["x", "x", "x"]] * 3


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a: &a [1, *a]", "an alias refers to the value it is part of"),
        ("a: &a {b: *a}", "an alias refers to the value it is part of"),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), f"nested more than {MAX_DEPTH} levels deep"),
    ],
)
def test_self_reference_and_depth_are_refused(text: str, problem: str) -> None:
    with pytest.raises(yaml.YAMLError, match=problem):
        load_yaml_text(text)


def test_a_few_aliases_and_the_deepest_config_values_still_load() -> None:
    text = "k: &k 3\nlayers: [{type: conv, kernel: *k, padding: *k}]\n"
    assert load_yaml_text(text) == {"k": 3, "layers": [{"type": "conv", "kernel": 3, "padding": 3}]}
    deep = "[" * MAX_DEPTH + "]" * MAX_DEPTH  # exactly the limit
    assert load_yaml_text(deep) is not None
    extra = MAX_ALIAS_VALUES  # aliases may add exactly this many values
    text = f"a: &a [{', '.join(['1'] * (extra - 1))}]\nb: *a\n"  # *a adds the list and its extra−1 items
    assert len(load_yaml_text(text)["b"]) == extra - 1


def test_set_refuses_the_same_and_quotes_at_most_80_characters() -> None:
    raw: dict = {}
    deep = "[" * 500 + "]" * 500
    with pytest.raises(UserError) as e:
        apply_override(raw, f"train.lr={deep}")
    message = str(e.value)
    place, _, problem = message.partition(": ")
    assert len(place) == len("--set ") + 80 and place.endswith("…")
    assert problem == f"VALUE is not valid YAML (nested more than {MAX_DEPTH} levels deep)"
    with pytest.raises(UserError, match="KEY is 100 levels deep"):
        apply_override(raw, ".".join(["a"] * 100) + "=1")
    with pytest.raises(UserError, match="spell it out to"):
        apply_override(raw, "train=" + bomb(7, 9).replace("\n", ", ").join("{}"))


# ---- property: any YAML text gives plain data or one YAMLError/UserError --------------------------------

SCALARS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(repr),
    st.sampled_from(["null", "true", "~", ".inf", "-.nan", "'x'", '"\\x00"', "2024-13-45", "!!binary AA=="]),
    st.text(alphabet="abc:-[]{}&*!|>'\"#, \n\t", max_size=12),
)


@st.composite
def yaml_texts(draw: st.DrawFn) -> str:
    """Flow-style YAML with anchors, aliases (to earlier anchors, and sometimes their own) and nesting."""
    anchors: list[str] = []

    def node(depth: int) -> str:
        kinds = ["scalar", "list", "map", "alias", "anchor"] if depth < 90 else ["scalar"]
        kind = draw(st.sampled_from(kinds))
        if kind == "alias" and anchors:
            return f"*{draw(st.sampled_from(anchors))}"
        if kind == "anchor":
            name = f"a{len(anchors)}"
            anchors.append(name)  # an alias inside may refer to the value being built: a cycle
            return f"&{name} {node(depth + 1)}"
        if kind == "list":
            return "[" + ", ".join(node(depth + 1) for _ in range(draw(st.integers(0, 4)))) + "]"
        if kind == "map":
            keys = draw(st.lists(st.sampled_from("abcdef"), max_size=3, unique=True))
            return "{" + ", ".join(f"{k}: {node(depth + 1)}" for k in keys) + "}"
        return draw(SCALARS)

    return node(0)


@FUZZ
@given(text=yaml_texts(), key=st.sampled_from(["train.lr", "model.layers[0]", "data", "x.y.z", "record"]))
def test_any_text_loads_or_fails_in_one_typed_error(text: str, key: str) -> None:
    try:
        load_yaml_text(text)
    except yaml.YAMLError:
        pass
    except ValueError:  # an impossible date, as YAML's own rules read it; read_yaml words it
        pass
    raw = {"train": {"lr": 0.1}, "model": {"layers": [{"type": "dense", "units": 2}]}}
    try:
        apply_override(raw, f"{key}={text}")
    except UserError as e:
        assert "\n" not in str(e)
