"""The apps layer: the ``trl-text2grad`` command line (:mod:`.main`), one module per subcommand (``annotate``,
``reward``, ``ppo``, ``demo``) and their shared helpers (:mod:`.common`). Nothing in the package imports it.

Each subcommand also runs as ``python -m trl_text2grad.cli.<name>`` or, for several processes or DeepSpeed,
``accelerate launch -m trl_text2grad.cli.<name> --config recipe.yaml``.
"""
