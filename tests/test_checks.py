"""support.checks: the one home of argument checks, and the callers that rely on it."""

import numpy as np
import pytest

from support import checks


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.int8(1)])
def test_positive_int_accepts_python_and_numpy_ints_and_returns_a_python_int(value):
    out = checks.positive_int(value, "epochs")
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize("value", [0, -1, 2.0, 2.5, True, np.bool_(True), "3", None, [1]])
def test_positive_int_refuses_with_the_name_the_value_and_what_is_allowed(value):
    with pytest.raises(ValueError, match=r"^epochs=.* must be a positive integer\.$"):
        checks.positive_int(value, "epochs")


def test_none_passes_only_where_allowed_and_the_message_says_so():
    assert checks.positive_int(None, "steps", allow_none=True) is None
    with pytest.raises(ValueError, match="must be a positive integer or None"):
        checks.positive_int(0, "steps", allow_none=True)


@pytest.mark.parametrize(("kwargs", "good", "bad", "wanted"), [
    (dict(minimum=0), 0, -1, "an integer >= 0"),
    (dict(minimum=1, maximum=5), 5, 6, r"an integer in \[1, 5\]"),
    (dict(maximum=3), -10, 4, "an integer <= 3"),
    ({}, -10, 1.5, "an integer"),
])
def test_integer_bounds_are_inclusive_and_named(kwargs, good, bad, wanted):
    assert checks.integer(good, "k", **kwargs) == good
    with pytest.raises(ValueError, match=f"k={bad!r} must be {wanted}."):
        checks.integer(bad, "k", **kwargs)


def test_a_note_says_what_the_bounds_are():
    with pytest.raises(ValueError, match=r"^k=17 must be an integer in \[1, 16\] \(d = pixels\)\.$"):
        checks.integer(17, "k", minimum=1, maximum=16, note="d = pixels")


def test_integer_raises_the_error_class_it_is_given():
    class DataError(ValueError):
        pass

    with pytest.raises(DataError):
        checks.integer(0, "size", minimum=1, error=DataError)


@pytest.mark.parametrize("value", [0.5, 1, np.float32(2.0), 1e-12])
def test_positive_float_returns_a_python_float(value):
    out = checks.positive_float(value, "learning_rate")
    assert out == pytest.approx(float(value)) and type(out) is float


@pytest.mark.parametrize("value", [0, 0.0, -1e-9, float("nan"), float("inf"), True, "0.1", None])
def test_positive_float_refuses_zero_negatives_non_finite_and_non_numbers(value):
    with pytest.raises(ValueError, match="learning_rate=.* must be a positive finite number"):
        checks.positive_float(value, "learning_rate")


def test_allow_zero_admits_zero_but_not_negatives_and_says_non_negative():
    assert checks.positive_float(0, "beta", allow_zero=True) == 0.0
    with pytest.raises(ValueError, match="beta=-0.5 must be a non-negative finite number"):
        checks.positive_float(-0.5, "beta", allow_zero=True)


@pytest.mark.parametrize(("value", "ok"),
                         [(0, True), (0.999, True), (1, False), (-0.1, False), (True, False)])
def test_fraction_is_the_half_open_unit_interval(value, ok):
    if ok:
        assert checks.fraction(value, "dropout") == value
    else:
        with pytest.raises(ValueError, match=r"dropout=.* must be a number in \[0, 1\)"):
            checks.fraction(value, "dropout")


def test_choice_lists_what_is_allowed_and_survives_unhashable_values():
    assert checks.choice("cosine", ("constant", "cosine"), "schedule") == "cosine"
    with pytest.raises(ValueError, match="schedule='step' is not allowed; choose one of constant, cosine"):
        checks.choice("step", ("constant", "cosine"), "schedule")
    with pytest.raises(ValueError, match="choose one of"):
        checks.choice(["cosine"], {"constant": 1, "cosine": 2}, "schedule")


def test_binarization_is_one_of_three():
    assert checks.BINARIZATIONS == ("none", "static", "dynamic")
    with pytest.raises(ValueError, match="binarization='soft' is not allowed; choose one of none, static"):
        checks.binarization("soft")


def test_image_shape_and_widths():
    assert checks.image_shape([8, 8, 1], "input_shape") == (8, 8, 1)
    for bad in [(8, 8), (8, 8, 0), (8.5, 8, 1), "8x8", None]:
        with pytest.raises(ValueError, match="must be an image shape"):
            checks.image_shape(bad, "input_shape")
    assert checks.widths([], "widths") == ()
    assert checks.widths((128, np.int64(64)), "widths") == (128, 64)
    with pytest.raises(ValueError, match="widths=0 must be a positive integer"):
        checks.widths((128, 0), "widths")
    with pytest.raises(ValueError, match="must be a tuple of positive integers"):
        checks.widths(128, "widths")


def test_the_predicates_reject_booleans():
    assert checks.is_int(np.int32(3)) and not checks.is_int(True) and not checks.is_int(3.0)
    assert checks.is_number(3) and checks.is_number(np.float16(0.5)) and not checks.is_number(False)


@pytest.mark.parametrize("call", [
    lambda: __import__("support.data", fromlist=["x"]).step_batches(np.zeros((4, 2)), 2, seed=0,
                                                                        binarization="soft"),
    lambda: __import__("support.models.vae", fromlist=["x"]).VAE((8, 8, 1), 2, likelihood="soft"),
    lambda: __import__("support.training", fromlist=["x"]).learning_rate_schedule(-1.0, "cosine", 10),
])
def test_the_package_refuses_through_the_same_checks(call):
    with pytest.raises(ValueError, match="is not allowed; choose one of|must be a positive finite number"):
        call()
