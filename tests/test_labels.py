"""The label vocabulary: roles by position, and the refusals that teach how to fix a config."""
from __future__ import annotations

import pytest

from cxrkit.core.labels import (
    DEFAULT_CONFIG,
    LabelConfigError,
    load_schema,
    parse_label_config,
)


def test_roles_are_read_by_position(renamed_roles):
    assert renamed_roles.opacity == "Pneumonic Opacity"
    assert (renamed_roles.normal, renamed_roles.pneumonia, renamed_roles.other_abnormality) == (
        "Unremarkable", "Infection", "Something else")
    assert load_schema(DEFAULT_CONFIG).pneumonia == "Pneumonia"  # the repo's config, whatever the environment says


def test_impressions_must_be_exactly_three():
    two = DEFAULT_CONFIG.read_text().replace('<Choice value="Other abnormality" hotkey="o"/>', "")
    with pytest.raises(LabelConfigError, match=r"has 2 choices \['Normal', 'Pneumonia'\].*exactly 3, read by "
                                               r"position: normal, pneumonia, other abnormality"):
        parse_label_config(two)


def test_a_table_target_missing_from_the_config_is_named():
    schema = load_schema(DEFAULT_CONFIG)
    schema.check_table("the x importer's TABLE", findings=[schema.opacity, None], subtypes=["Viral", None])
    with pytest.raises(LabelConfigError, match=r"the x importer's TABLE maps onto a name the label config lacks: "
                                               r"unknown subtype 'Mycoplasma'"):
        schema.check_table("the x importer's TABLE", findings=[schema.opacity], subtypes=["Viral", "Mycoplasma"])
