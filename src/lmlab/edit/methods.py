"""Import every built-in editor so that it registers itself (see :mod:`lmlab.edit.registry`)."""

from lmlab.edit import alphaedit, deletion, ike, memit, rome  # noqa: F401
