"""Built-in callbacks usable from a config's ``callbacks:`` list (registered lazily)."""
from kplm.hookspecs import hookimpl


@hookimpl
def register_callbacks(register):
    register("early_stopping", "keras.callbacks:EarlyStopping")
    register("terminate_on_nan", "keras.callbacks:TerminateOnNaN")
    register("csv_logger", "kplm.training.csv_log:CsvLogger")  # in run_dir only

