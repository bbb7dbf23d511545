"""Test configuration: float64 everywhere, so dense references are exact.

Tests that exercise float32 behaviour ask for it with explicit dtypes.
"""

import os

# Most of the suite's time is XLA compiling many small programs; LLVM's
# optimisation passes are a third of that on CPU and buy nothing for arrays
# of a few hundred numbers (matrix products call the same runtime library
# either way). Set before JAX creates its backend; an explicit setting wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
# Random draws compile ~5x faster on CPU with the classic stream; results
# never depend on which stream is used.
jax.config.update("jax_threefry_partitionable", False)


# Cases kept out of the default run (``pytest -n 2``) so that it stays under
# ten minutes on 2 cores; ``pytest -n 2 -m slow`` runs them. Each is a second
# variant of a check that runs by default in another variant: the ``jit``-free
# twins of the chex variants, the precision cases beyond the two-layer net,
# and repeated layouts of the convolution and K-FAC reference checks.
SLOW_CASES = (
    "__without_jit",
    "precision_test.py::test_default_policy_matches_cpu_float32[mlp",
    "precision_test.py::test_default_policy_matches_cpu_float32[flax-cnn",
    "precision_test.py::test_mixed_matches_cpu_float32[mlp",
    "precision_test.py::test_mixed_matches_cpu_float32[flax-cnn",
    "precision_test.py::test_default_precision_rounds[mlp",
    "precision_test.py::test_default_precision_rounds[flax-cnn",
    "test_conv_gram_is_exact_in_every_form_and_chunked[True-2-VALID]",
    "test_conv_layers_are_found_and_their_factors_are_exact[False-1-SAME]",
    "test_bare_mlp_apply_gives_the_models_own_factors[0.1]",
    "test_kfac_preconditioner_equals_kfac_over_steps[extra1]",
    "test_default_gram_is_exact_and_structured[eqx_cnn_digits]",
    "test_chunked_and_cross_gram[eqx_cnn_digits]",
    "test_fixed_momentum_with_fixed_learning_rate_is_heavy_ball",
    "test_two_steps_match_the_dense_two_by_two_system[kfac-softmax_cross",
    "test_readme_snippet_runs_and_its_gram_is_exact[1]",
    "test_learning_rate_sweep_compiles_once[gd]",
    "test_chunked_products_and_streamed_cross_gram[mlp_tanh_c2]",
    "test_chunked_products_and_streamed_cross_gram[two_layer_c3]",
    "test_ngd_step_matches_dense[eqx_cnn_digits]",
    "test_expand_exact_for_linear_net_with_loss_over_positions[1d_valid]",
    "test_expand_exact_for_linear_net_with_loss_over_positions[nhwc_same",
    "test_cg_on_a_singular_gram_flags_and_takes_a_bounded_step[float64]",
    "test_kfac_step_on_a_cnn_matches_explicit_kronecker[nhwc-expand-pi-kwargs1",
    "test_cross_gram_matches_dense[structured-mlp_relu_c1]",
    "test_half_precision_inputs_compute_in_the_models_dtype[kfac-float16]",
    "test_train_reads_mnist_idx_files",
    # Multi-process runs (the guide's "slow multi-process" tests): the
    # two-process equality and the 4-device cases (one child process each);
    # the one-device mesh checks stay in the default run.
    "test_two_processes_equal_one",
    "test_sharded_cases_on_four_cpu_devices[",
    "test_learning_rate_sweep_compiles_once[ngd]",
    "test_kfac_step_on_a_cnn_matches_explicit_kronecker[nchw-expand-exact",
    "test_full_batch_vector_form_equals_the_one_hot_form[kwargs1]",
    "test_full_batch_vector_form_equals_the_one_hot_form[kwargs3]",
    "test_full_batch_vector_form_equals_the_one_hot_form[kwargs5]",
    "test_mini_batch_vector_form_equals_the_one_hot_form[kwargs1]",
    "test_mini_batch_vector_form_equals_the_one_hot_form[kwargs3]",
    # Siblings of default cases on the same code paths (the suite's time).
    # The two-batch model: the cross-entropy dense cases, the NGD copy
    # case and the float64 flax case stay in the default run.
    "test_two_batch_model_matches_the_dense_system_on_both_batches[kfac-sq",
    "test_two_batch_model_matches_the_dense_system_on_both_batches[ngd-sq",
    "test_two_copies_of_one_batch_give_the_one_batch_step[kfac]",
    "test_two_batch_model_on_a_flax_apply_with_half_precision_inputs[kfac]",
    "test_sequence_models_gram_is_exact_on_every_path[norm_embedding]",
    "test_kfac_step_on_a_cnn_matches_explicit_kronecker[nhwc-expand-pi-kwargs0",
    "test_jacobian_matches_jacrev[mlp_relu_c1]",
    "test_cross_gram_matches_dense[jacobian-mlp_relu_c1]",
    "test_mlp_matches_explicit_kronecker[pi-0.1-forms0]",
)


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if any(case in item.nodeid for case in SLOW_CASES):
      item.add_marker(pytest.mark.slow)
