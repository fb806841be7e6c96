"""musketeers: the learner. Config, data, adapters g_phi, the GRPO trainer, evaluation, reports, sweeps and
the CLI, in the layers that musketeers/layers.py declares (tests/test_layers.py checks every import). It
uses experts/ (frozen models serving pooled states) and rewards/ (verifiers), which never import it.
"""
