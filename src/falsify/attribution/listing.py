"""What ``falsify methods`` prints: the methods ``--methods`` takes."""
from __future__ import annotations

import json
import textwrap

from ..choices import CONTROLS
from . import available_methods, method_options


def methods_table() -> str:
    """What ``--methods`` takes, as ``falsify methods`` prints it."""
    avail = available_methods()
    wrap = lambda text: textwrap.wrap(text, 110, initial_indent="  ", subsequent_indent="  ",  # noqa: E731
                                      break_on_hyphens=False)
    lines = ["Built-in methods (--methods NAME; options as --option NAME.KEY=VALUE):"]
    for m in avail["builtin"]:
        opts = ", ".join(method_options(m))
        lines.append(f"  {m:<18} {'control; ' if m in CONTROLS else ''}options: {opts or '-'}")
    lines += ["", "Registered in this process (falsify.attribution.register_method):"]
    lines += [f"  {m}" for m in avail["registered"]] or ["  (none)"]
    lines += ["", "captum's attributions by name (--methods captum:NAME; the same similarity target; layer methods "
              "take --layer or --option captum:NAME.layer=..., default the model's CAM layer):"]
    lines += wrap(", ".join(avail["captum"]))
    lines += ["", "Your own method: --methods module.path:callable, a function method(model, images, references) -> "
              "maps", "  ((N,3,H,W) in [0,1], (N,D) -> (N,H,W)) or an Explainer class; the module is imported "
              "because you named it", "  (put its folder on PYTHONPATH). See README.md, 'Your own method'."]
    return "\n".join(lines)


def methods_json() -> str:
    """What ``--methods`` takes, as ``falsify methods --json`` prints it."""
    return json.dumps(available_methods(), indent=2)
