"""dataset.json labels read once (stunet.labels.label_names_of / label_values_of): index -> name for the labels with
one index, regions and the ignore label left out, and a one-line refusal of anything else."""
import pytest

from stunet.labels import is_region_based, label_names_of, label_values_of

LABELS = {"background": 0, "liver": 1, "tumour": 2, "whole": [1, 2], "ignore": 3}


def test_index_to_name_leaves_out_regions_and_the_ignore_label():
    assert label_names_of({"labels": LABELS}) == {0: "background", 1: "liver", 2: "tumour"}
    assert label_values_of({"labels": LABELS})["whole"] == (1, 2)
    assert is_region_based({"labels": LABELS}) and not is_region_based({"labels": {"background": 0, "liver": 1}})


@pytest.mark.parametrize("value", [[], 1.7, True, "1", None, [1, 2.5]])
def test_a_value_that_is_no_index_is_refused_in_one_line(value):
    with pytest.raises(ValueError) as refused:
        label_names_of({"labels": {"background": 0, "liver": value}}, "Dataset001/dataset.json")
    message = str(refused.value)
    assert message.startswith("Dataset001/dataset.json: label 'liver' is ") and "\n" not in message


def test_two_names_of_one_index_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^dataset.json: labels 'liver' and 'spleen' both have index 1; give each "
                                         r"name its own index$"):
        label_names_of({"labels": {"background": 0, "liver": 1, "spleen": 1}})


def test_no_labels_object_is_refused():
    with pytest.raises(ValueError, match='no "labels" object'):
        label_names_of({"name": "x"})
