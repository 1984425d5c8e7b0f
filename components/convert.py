from kfp import dsl

from components.images import RUNTIME


@dsl.component(base_image=RUNTIME)
def convert(run_uri: str, model: str, framework: str, output_kind: str, output_name: str) -> str:
    """Validate the model as ONNX into the run; returns the URI of model/model.onnx."""
    from testprio.stages import convert_model

    return convert_model(run_uri, model, framework, output_kind, output_name)
