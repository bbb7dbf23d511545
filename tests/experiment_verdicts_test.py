"""Every claim's verdict on made-up measurements: a good one PASSes, a
known-bad one FAILs (the pass logic is tested, not restated)."""

import math

import pytest

from experiments import (
  analysis,
  figure1,
  forster_convergence,
  general_loss,
  generalization,
  gram_limit,
  jacobian_stability,
  kfac_forster,
  lambda0_vs_n,
  linearized_paths,
  ngd_rate,
  train,
  training_conditions,
  training_curves,
)
from ngdjax.experiment import verdicts
from ngdjax.experiment.verdicts import Check

# --------------------------------------------------------------------------
# The checks-as-data module.
# --------------------------------------------------------------------------


def test_conditions_ops_keys_and_missing_values():
  c = Check("c", (("a", "<=", "b"), ("n", ">=", 1)))
  assert verdicts.holds(c, {"a": 1.0, "b": 1.0, "n": 1})
  assert not verdicts.holds(c, {"a": 1.1, "b": 1.0, "n": 1})
  assert not verdicts.holds(c, {"a": 1.0, "b": 1.0, "n": 0})
  # Missing, None or NaN on either side: false, never vacuously true.
  assert not verdicts.holds(c, {"b": 1.0, "n": 1})
  assert not verdicts.holds(c, {"a": None, "b": 1.0, "n": 1})
  assert not verdicts.holds(c, {"a": 0.0, "b": math.nan, "n": 1})
  # A boolean is not a number.
  assert not verdicts.holds(c, {"a": True, "b": 2.0, "n": 1})
  flag = Check("f", (("ok", "is", True),))
  assert verdicts.holds(flag, {"ok": True})
  assert not verdicts.holds(flag, {"ok": 1})
  with pytest.raises(ValueError, match="unknown op"):
    verdicts.holds(Check("x", (("a", "~", 1),)), {"a": 1})
  with pytest.raises(ValueError, match="duplicate"):
    verdicts.evaluate((c, c), {})


def test_relative_tolerance_scales_with_the_bound():
  c = Check("c", (("ratio", "<=", 0.999),), rtol=1e-3)
  assert verdicts.holds(c, {"ratio": 0.9999})
  assert not verdicts.holds(c, {"ratio": 1.0001})
  lower = Check("c", (("gap", ">=", 10.0),), rtol=0.1)
  assert verdicts.holds(lower, {"gap": 9.1})
  assert not verdicts.holds(lower, {"gap": 8.9})


def test_holds_past_width_needs_more_than_the_widest():
  widths = [8, 16, 64, 64, 256]
  assert analysis.threshold_width(widths, [0, 1, 1, 1, 1]) == 16
  assert analysis.holds_past_width(widths, [0, 1, 1, 1, 1])
  # Only the widest passes: m* exists but is the widest, not "past".
  assert analysis.threshold_width(widths, [0, 0, 0, 1, 1]) == 256
  assert not analysis.holds_past_width(widths, [0, 0, 0, 1, 1])
  assert not analysis.holds_past_width(widths, [1, 1, 1, 1, 0])


def _both(fn, good, bad_updates, *args):
  """``fn(good)`` all true; each bad update flips at least one check."""
  assert all(fn(good, *args).values()), fn(good, *args)
  for update in bad_updates:
    bad = {**good, **update}
    assert not all(fn(bad, *args).values()), update


# --------------------------------------------------------------------------
# C1 .. C12.
# --------------------------------------------------------------------------


def test_c1_verdict():
  etas = (0.1, 0.5, 1.0)
  good = {"widest_width": 1024, "m_star/eta=0.1": 64.0,
          "m_star/eta=0.5": 64.0, "runs_inside_hypotheses": 2,
          "runs_inside_breaking_rate": 0,
          "eta1_first_ratio_exponent_upper": -0.5}
  config = ngd_rate.SPEC.default_config()
  config.learning_rates = etas
  _both(ngd_rate.SPEC.verdict, good, [
      {"runs_inside_hypotheses": 0},  # no run qualifies: FAIL
      {"runs_inside_breaking_rate": 1},
      {"m_star/eta=0.5": None},
      {"m_star/eta=0.1": 1024.0},  # holds only at the widest width
      {"eta1_first_ratio_exponent_upper": 0.01},
  ], config)
  kinds = verdicts.kinds(ngd_rate.SPEC.check_list(config))
  assert kinds["theorem"] == verdicts.THEOREM
  assert kinds["rate_wide"] == verdicts.OBSERVATION


def test_c2_verdict():
  config = general_loss.SPEC.default_config()
  config.alpha, config.eta_fractions = 1.0, (0.1, 0.9)  # eta = 2/30, 0.6
  good = {"widest_width": 1024, "m_star/eta=0.06667": 8.0,
          "m_star/eta=0.6": 512.0, "runs_inside_hypotheses": 1,
          "runs_inside_breaking_rate": 0}
  _both(general_loss.SPEC.verdict, good, [
      {"runs_inside_hypotheses": 0},
      {"runs_inside_breaking_rate": 2},
      {"m_star/eta=0.6": 1024.0},
  ], config)


def test_c3_verdict():
  good = {"widest_width": 4096, "m_star/gram": 16.0,
          "m_star/distance": 8.0, "flips_exponent_upper": -0.3}
  _both(training_conditions.SPEC.verdict, good, [
      {"m_star/gram": None}, {"m_star/distance": 4096.0},
      {"flips_exponent_upper": 0.0}, {"flips_exponent_upper": None}])


def test_c4_verdict():
  good = {"exponent_upper": -0.2, "runs_above_lemma7": 0}
  _both(jacobian_stability.SPEC.verdict, good,
        [{"exponent_upper": 0.1}, {"runs_above_lemma7": 1}])


def test_c5_verdict():
  config = gram_limit.SPEC.default_config()
  good = {"exponent": -0.49, "m_star": 512.0, "widest_width": 131072.0}
  _both(gram_limit.SPEC.verdict, good, [
      {"exponent": -0.3}, {"exponent": -0.7}, {"m_star": None},
      {"m_star": 131072.0}], config)


def test_c6_verdict():
  config = kfac_forster.SPEC.default_config()
  good = {"conds_inside_hypotheses": 2, "conds_inside_breaking_bound": 0,
          "conds_breaking_bound": 0, "rates_finite": True,
          "rate_largest_drop": 0.0, "rate_rise": 0.99,
          "rate_prediction_gap_max": 0.005, "one_step_forster_max": 0.09,
          "first_order_gap_max": 1e-12, "output_gap_max": 0.05}
  _both(kfac_forster.SPEC.verdict, good, [
      {"conds_inside_hypotheses": 0},
      {"conds_inside_breaking_bound": 1},
      {"conds_breaking_bound": 1},
      {"rates_finite": False},
      {"rate_largest_drop": 0.05},
      {"rate_rise": 0.2},
      {"rate_prediction_gap_max": 0.05},
      {"one_step_forster_max": 0.2},
      {"first_order_gap_max": 1e-3},
      {"output_gap_max": 0.2},
  ], config)


def test_c6_bound_tolerance_is_relative():
  """At kappa = 1e4 the bound is 1 - 2e-4: an absolute 0.02 could not
  fail, a relative one can."""
  bound = (1 - 1e-4) ** 2
  assert kfac_forster._breaks_bound(
      {"max_ratio": 0.99995, "bound": bound}, 0.1)
  assert not kfac_forster._breaks_bound(
      {"max_ratio": 1 - 1.9e-4, "bound": bound}, 0.1)
  assert kfac_forster._breaks_bound(
      {"max_ratio": math.nan, "bound": bound}, 0.1)


def test_c7_verdict():
  good = {"runs_not_converged": 0, "kinds_newton_not_fewer": 0}
  _both(forster_convergence.SPEC.verdict, good,
        [{"runs_not_converged": 1}, {"kinds_newton_not_fewer": 1}])


def test_c8_verdict():
  good = {"reps": 5, "beta_upper": 0.33, "envelope_beta_upper": 0.4,
          "max_beta": 0.5}
  _both(lambda0_vs_n.SPEC.verdict, good, [
      {"reps": 3}, {"beta_upper": 0.55}, {"envelope_beta_upper": 0.5}])


def test_c9_verdict():
  config = generalization.SPEC.default_config()
  good = {"separation_gap": 2.0, "noise_step_min": 0.1,
          "error_gap_random": 0.4, "error_gap_noise": 0.3,
          "bound_large_n_max": 0.95, "kernel_bound_margin_large_n_min": 0.9,
          "kernel_bound_margin_min": 0.9, "finite_fitted_true_runs": 3,
          "finite_bound_margin_min": 0.9,
          "lemma11_ratio_max": 0.2, "lemma12_ratio_max": 1.05,
          "lemma12_ratio_min": 0.97}
  _both(generalization.SPEC.verdict, good, [
      {"separation_gap": -0.1},
      {"noise_step_min": 0.0},
      {"error_gap_noise": 0.05},
      {"bound_large_n_max": 1.38},  # vacuous for a [0, 1] loss
      {"kernel_bound_margin_large_n_min": -0.01},
      {"kernel_bound_margin_min": -0.01},
      {"finite_fitted_true_runs": 0},
      {"finite_bound_margin_min": None},
      {"lemma11_ratio_max": 1.2},
      {"lemma12_ratio_max": 1.3},
      {"lemma12_ratio_min": 0.8},
  ], config)


def test_c10_verdict():
  config = linearized_paths.SPEC.default_config()
  good = {"tol": 1e-10, "limit_error_max": 1e-12,
          "gd_weight_path_gap": 0.5, "ngd_one_step_closed_form": 1e-14,
          "ngd_one_step_actual": 1e-13}
  _both(linearized_paths.SPEC.verdict, good, [
      {"limit_error_max": 1e-8}, {"gd_weight_path_gap": 1e-6},
      {"ngd_one_step_actual": 1e-3}], config)


def test_c11_verdict():
  config = figure1.SPEC.default_config()
  _both(figure1.SPEC.verdict, {"gd_deviation_vector": 0.3},
        [{"gd_deviation_vector": 1e-9}], config)


def test_c12_verdict():
  config = training_curves.SPEC.default_config()
  good = {}
  for m in config.widths:
    for base in training_curves.BASELINES:
      good[f"m{m}/{base}/effective_steps_over_speedup"] = 50.0
    good[f"m{m}/ngd/steps_to_target"] = 3
    good[f"m{m}/kfac_forster/steps_to_target"] = 5
  m0 = config.widths[0]
  _both(training_curves.SPEC.verdict, good, [
      {f"m{m0}/ngd/steps_to_target": None},  # never reached the target
      {f"m{m0}/kfac_forster/steps_to_target": 51},
      {f"m{m0}/adam/effective_steps_over_speedup": 2.0},
  ], config)


def test_tuple_keys_walk_nested_measured_dicts():
  c = Check("ngd", ((("steps_to_97", "ngd"), ">=", 0),))
  assert verdicts.holds(c, {"steps_to_97": {"ngd": 120}})
  assert not verdicts.holds(c, {"steps_to_97": {"ngd": None}})
  assert not verdicts.holds(c, {"steps_to_97": {}})
  assert not verdicts.holds(c, {"steps_to_97": 3})


def test_d1_verdict():
  good = {"steps_to_97": {"ngd": 120, "kfac": 90, "adam": None,
                          "sgd": None}}
  _both(train.SPEC.verdict, good, [
      {"steps_to_97": {"ngd": None, "kfac": 90}},
      {"steps_to_97": {"ngd": 120, "kfac": None}},
      {"steps_to_97": {}}])
