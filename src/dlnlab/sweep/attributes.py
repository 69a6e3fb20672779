"""Variable attributes of a sweep's chunk files and of :func:`~dlnlab.sweep.store.open_sweep`.

Every variable carries ``long_name`` (what it is, with the rule that made it) and, where it has
one, ``units``: time-like variables are in ``t = step x learning rate`` (docs/sweeps.md,
"The dataset"; observables as docs/results.md). Attributes are metadata only: a chunk's
``data_hash`` covers its values, not its attributes.
"""

from __future__ import annotations

#: Units of a time-like variable (t = step x learning rate; SDE methods: step x step size).
TIME_UNITS = "t = step x learning rate"

#: Units of a drift or a diffusion: per unit of t.
RATE_UNITS = "1/t, t = step x learning rate"

#: ``name -> (long_name, units or None)`` for every variable a chunk file or the combined
#: dataset may hold.
VARIABLE_ATTRIBUTES: dict[str, tuple[str, str | None]] = {
    "loss": ("training loss: population loss 0.5 tr(D S_x D^T) + 0.5 tr S_eps online, empirical "
             "loss on the data set offline (docs/results.md)", None),
    "test_loss": ("population loss (equals loss online)", None),
    "amplitude": ("teacher-mode amplitude a_a = u_a^T W v_a, W = W_L ... W_1", None),
    "cross_amplitude": ("cross amplitude a_ab = u_a^T W v_b (U^T W V)", None),
    "gf_drift": ("exact gradient-flow drift -u_a^T Theta(D S_x) v_a (docs/theory.md section 5)",
                 RATE_UNITS),
    "diffusion": ("exact modewise diffusion D_a(theta) of the anisotropic SDE, d[a_a]_t = D_a dt "
                  "(docs/theory.md section 5)", RATE_UNITS),
    "ito_drift": ("exact Ito drift of the mode under the anisotropic SDE (docs/theory.md "
                  "section 5)", RATE_UNITS),
    "reduced_gf_drift": ("aligned-balanced closed-form gradient-flow drift at the current "
                         "amplitudes (docs/theory.md section 6; NaN where it does not apply)",
                         RATE_UNITS),
    "reduced_diffusion": ("aligned-balanced closed-form diffusion at the current amplitudes "
                          "(docs/theory.md section 6; NaN where it does not apply)", RATE_UNITS),
    "reduced_ito_drift": ("aligned-balanced closed-form Ito drift at the current amplitudes "
                          "(docs/theory.md section 6; NaN where it does not apply)", RATE_UNITS),
    "balance_residual": ("r_l = ||W_l W_l^T - W_{l+1}^T W_{l+1}||_F / (||W_l W_l^T||_F + "
                         "||W_{l+1}^T W_{l+1}||_F); 0 = balanced", "1"),
    "balance_numerator": ("||W_l W_l^T - W_{l+1}^T W_{l+1}||_F", None),
    "layer_norm": ("Frobenius norm ||W_l||_F", None),
    "singular_value": ("singular values of W = W_L ... W_1, descending", None),
    "parameters": ("weights theta = (vec W_1, ..., vec W_L), column-stacking vec", None),
    "time": ("record time of the point's record (NaN past its last record)", TIME_UNITS),
    "step": ("step index of the record (-1 past the point's last record)", "steps"),
    "diverged_step": ("first step whose loss was non-finite or above divergence_threshold, up to "
                      "the point's last step; -1: did not diverge", "steps"),
    "status": ("run status: ok, diverged (labelled, kept), failed (its simulation raised; NaN "
               "data), pending (its chunk is not complete)", None),
    "layout_product": ("how the engine ran the matrix products over the runs: broadcast or batched "
                       "(the config's product, resolved from auto; docs/performance.md); empty: "
                       "failed or pending", None),
    "step_kernel": ("what computed the steps: compiled (the compiled block kernel, on CPU) or xla "
                    "(the XLA step); docs/architecture.md, Compiled block kernels; empty: failed or "
                    "pending", None),
    "final_loss": ("loss at the point's last record (NaN: failed or pending)", None),
    "censor_time": ("censoring time of the time-to-event variables: the last record time, or "
                    "the divergence time (diverged_step x step time) of a diverged run", TIME_UNITS),
    "t_half": ("first record time with a_a >= 0.5 s_a (dlnlab.analysis.events.crossing_times; "
               "NaN: not reached by censor_time, or the run diverged; censored)", TIME_UNITS),
    "t_90": ("first record time with a_a >= 0.9 s_a (dlnlab.analysis.events.crossing_times; "
             "NaN: not reached by censor_time, or the run diverged; censored)", TIME_UNITS),
    "spectrum": ("teacher singular values s_a of the point (zeros past its rank)", None),
    "point": ("flat index of the point in the sweep (C order of the sweep dimensions)", None),
    "run": ("run index within the point (its keys: docs/sweeps.md, Keys)", None),
    "method_name": ("training method (dlnlab.dynamics.registry)", None),
    "mode": ("teacher mode index a, 1-based", None),
}


def variable_attributes(name: str) -> dict[str, str]:
    """``{"long_name": ..., "units": ...}`` for ``name`` (``units`` only where it applies);
    an empty dict for a name the table does not know."""
    entry = VARIABLE_ATTRIBUTES.get(name)
    if entry is None:
        return {}
    long_name, units = entry
    return {"long_name": long_name, **({"units": units} if units else {})}


def annotate(ds) -> None:
    """Set :func:`variable_attributes` on every variable and coordinate of ``ds`` in place
    (attributes already set are kept)."""
    for name, variable in ds.variables.items():
        for key, value in variable_attributes(name).items():
            variable.attrs.setdefault(key, value)
