"""Registry versions shipped with the package, the operator's approval, and what it lets out (docs/OPERATOR.md).

`versions` and `policy` are pure (values in, values out); `shipped` reads the version files that ship
in this directory; `approval` reads and writes the approval file beside the config.
"""
