"""tidings.loader: MODULE:OBJ specs, loaded or refused with a message that says why."""

from __future__ import annotations

import json

import pytest

from tidings.loader import load_object


def test_a_spec_names_an_attribute_of_an_importable_module() -> None:
    assert load_object("json:dumps", "handlers") is json.dumps


@pytest.mark.parametrize("spec", ["json", "json:", ":dumps", ""])
def test_a_spec_without_module_and_object_says_how_to_write_one(spec: str) -> None:
    with pytest.raises(ValueError, match=r"^handlers .*: write MODULE:OBJ"):
        load_object(spec, "handlers")


def test_a_missing_module_is_a_value_error_naming_what_was_asked() -> None:
    with pytest.raises(ValueError, match=r"^worker 'no_such_module_x:w': cannot load it"):
        load_object("no_such_module_x:w", "worker")


def test_a_missing_attribute_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="cannot load it"):
        load_object("json:no_such_attribute", "handlers")
