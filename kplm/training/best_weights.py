"""The best weights of a fine-tuning run by its validation metric, kept across resumes."""
import json
import math
import os

from kplm.finite import non_finite_weights


class BestWeights:
    """Keeps the weights of the best validation so far in ``path`` (``.weights.h5``), with the
    value and step beside it in ``path + ".json"``, both written atomically; a resumed run
    reads them back, so it only replaces a better earlier best with a still better one (a
    step trained again after a resume gives the same value, which is not better: the best
    step stays). ``write=False`` (a multi-worker non-chief) tracks the best without writing.
    The training loop calls ``update`` after each validation (``train(..., best=...)``).
    """

    def __init__(self, path, monitor, mode="max", write=True, variables=None):
        self.path, self.monitor, self.mode, self.write = path, monitor, mode, write
        # ``variables`` (a function returning them): keep only those, by path, in a safetensors
        # file. A LoRA model's trainable variables: Keras writes a LoRA layer's weights merged,
        # which would not restore its factors.
        self.variables = variables
        self.best = self.step = None
        try:
            with open(path + ".json", encoding="utf-8") as f:
                saved = json.load(f)
            self.best, self.step = float(saved["value"]), saved.get("step")
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def _better(self, value):
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def update(self, model, step, logs):
        """After the validation of ``step``: keep ``model``'s weights if ``logs[monitor]`` is
        the best value so far."""
        value = (logs or {}).get(self.monitor)
        value = None if value is None else float(value)
        if not self._better(value) or non_finite_weights(model.weights):
            return  # a model with a NaN weight is never the best one, nor written
        self.best, self.step = value, step
        if not self.write:
            return
        tmp = (self.path + ".tmp" if self.variables is not None
               else self.path[: -len(".weights.h5")] + ".tmp.weights.h5")
        try:
            if self.variables is not None:
                from kplm.models.lora import save_variables
                save_variables(self.variables(), self.path)  # atomic itself
            else:
                model.save_weights(tmp)
                os.replace(tmp, self.path)
            with open(self.path + ".json.tmp", "w", encoding="utf-8") as f:
                json.dump({"value": value, "step": step, "monitor": self.monitor}, f)
            os.replace(self.path + ".json.tmp", self.path + ".json")
        except OSError as e:
            for name in (tmp, self.path + ".json.tmp"):
                if os.path.exists(name):
                    os.remove(name)
            from kplm.training.checkpoints import CheckpointWriteError
            raise CheckpointWriteError(f"cannot write the best weights {self.path}: "
                                       f"{e.strerror or e}; training stopped") from None

    @staticmethod
    def load(model, path, variables=None):
        """Load the best weights into ``model`` (or into ``variables``, a list, when they were
        kept alone); returns the step they are from. A damaged file is one ``KplmError`` line
        naming it."""
        if variables is not None:
            from kplm.models.lora import load_variables
            load_variables(variables, path, "best adapters")
        else:
            from kplm.runs import load_weights
            load_weights(model, path, "the best weights")
        try:
            with open(path + ".json", encoding="utf-8") as f:
                return json.load(f)["step"]
        except (OSError, ValueError, KeyError):
            return None

    @staticmethod
    def remove(path):
        for name in (path, path + ".json"):
            if os.path.exists(name):
                os.remove(name)
