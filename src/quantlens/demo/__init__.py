"""The demos: the digits CNN (:mod:`.digits`), its planted culprit (:mod:`.culprit`) and the
language model (:mod:`.lm`). ``quantlens.demo:model`` and ``quantlens.demo:data`` (and ``:calib``) name the
digits CNN and its held-out digits, as the CLI's ``--model`` / ``--data`` take them."""

from quantlens.demo.digits import calib, data, model

__all__ = ["model", "data", "calib"]
