"""One convert component per framework, each in its own image (``components.images``).

KFP's ``dsl.OneOf`` does not run in the local runner, so the pipeline picks one of these
when it is built (``pipelines.prioritize.CONVERT_COMPONENTS``). All four run the same
function; each is named ``convert-<framework>``, runs in that framework's image and is
handed its ``converter`` by the pipeline, and the stage refuses a model of another
framework.
"""

from kfp import dsl

from components.images import CONVERT_PADDLE, CONVERT_PYTORCH, CONVERT_TENSORFLOW, RUNTIME


def convert(
    run_uri: str,
    model: str,
    framework: str,
    output_kind: str,
    output_name: str,
    input_shape: str,
    parity_tolerance: float,
    strict_model_checks: bool,
    converter: str,
) -> str:
    """Convert (or validate) the model into the run with parity and model checks; returns
    the URI of model/model.onnx."""
    from testprio.stages import convert_model

    return convert_model(
        run_uri,
        model,
        framework,
        output_kind,
        output_name,
        input_shape,
        parity_tolerance,
        strict_model_checks,
        converter=converter,
    )


def _convert_component(converter: str, image: str):
    component = dsl.component(base_image=image, install_kfp_package=False)(convert)
    # Distinct names keep the compiled pipelines and the Kubeflow UI telling them apart.
    component.name = component.component_spec.name = f"convert-{converter}"
    return component


convert_onnx = _convert_component("onnx", RUNTIME)
convert_pytorch = _convert_component("pytorch", CONVERT_PYTORCH)
convert_tensorflow = _convert_component("tensorflow", CONVERT_TENSORFLOW)
convert_paddle = _convert_component("paddle", CONVERT_PADDLE)
