"""Every kernel's gate cases: importing a module registers its provider (gate.provider).

A new kernel adds a ``gate_<op>.py`` with a ``@provider("<op>")`` function and imports it here.
"""

import gate_bitpack  # noqa: F401
import gate_device  # noqa: F401
import gate_lif  # noqa: F401
import gate_models  # noqa: F401
import gate_ss2d  # noqa: F401
