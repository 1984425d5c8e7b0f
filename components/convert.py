"""One convert component per framework, each in its own image (``components.images``).

KFP's ``dsl.OneOf`` does not run in the local runner, so the pipeline picks one of these
when it is built (``pipelines.prioritize.CONVERT_COMPONENTS``). All four run the same
function; each is named ``convert-<framework>``, runs in that framework's image and is
handed its ``converter`` by the pipeline, and the stage refuses a model of another
framework.
"""

from kfp import dsl
from kfp.dsl import Model, Output

from components.images import CONVERT_PADDLE, CONVERT_PYTORCH, CONVERT_TENSORFLOW, RUNTIME
from testprio.params import describe


@describe(
    run_uri="the run folder {root}/{run_id} (the start task's output)",
    onnx_model="the converted model, a Model artifact pointing at {run}/model/model.onnx "
    "(metadata: uri, run_uri, framework)",
    converter="the framework this component's image converts (set by the pipeline)",
)
def convert(
    run_uri: str,
    model: str,
    onnx_model: Output[Model],
    framework: str = "auto",
    output_kind: str = "auto",
    output_name: str = "",
    input_shape: str = "",
    parity_tolerance: float = 1e-3,
    strict_model_checks: bool = False,
    converter: str = "",
) -> None:
    """Convert (or validate) the model into the run's model/ folder with parity and model
    checks."""
    from testprio.stages import convert_model, publish_artifact

    uri = convert_model(
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
    publish_artifact(onnx_model, run_uri, uri, framework=converter)


def _convert_component(converter: str, image: str):
    component = dsl.component(base_image=image, install_kfp_package=False)(convert)
    # Distinct names keep the compiled pipelines and the Kubeflow UI telling them apart.
    component.name = component.component_spec.name = f"convert-{converter}"
    return component


convert_onnx = _convert_component("onnx", RUNTIME)
convert_pytorch = _convert_component("pytorch", CONVERT_PYTORCH)
convert_tensorflow = _convert_component("tensorflow", CONVERT_TENSORFLOW)
convert_paddle = _convert_component("paddle", CONVERT_PADDLE)
