"""Analysis tools over runs and trained models: the tables of docs/RESULTS.md
(`results_table`, `sweep_table`, over `run_tables`), the step sizes of the factorised layers
(`step_gain`, over `step_measures`) and what a factorisation can express of a trained kernel
(`kernel_fit`, over `kernel_approx`; `trained_model` loads a run's model for both)."""
