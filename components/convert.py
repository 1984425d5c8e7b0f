"""One convert component per framework, each in its own image (``components.images``).

KFP's ``dsl.OneOf`` does not run in the local runner, so the pipeline picks one of these
when it is built (``pipelines.prioritize.CONVERT_COMPONENTS``); each tells the stage which
framework it converts, and the stage refuses a model of another.
"""

from kfp import dsl

from components.images import CONVERT_PADDLE, CONVERT_PYTORCH, CONVERT_TENSORFLOW, RUNTIME


@dsl.component(base_image=RUNTIME, install_kfp_package=False)
def convert_onnx(
    run_uri: str,
    model: str,
    framework: str,
    output_kind: str,
    output_name: str,
    input_shape: str,
    parity_tolerance: float,
    strict_model_checks: bool,
) -> str:
    """Validate and check an ONNX model into the run; returns the URI of model/model.onnx."""
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
        converter="onnx",
    )


@dsl.component(base_image=CONVERT_PYTORCH, install_kfp_package=False)
def convert_pytorch(
    run_uri: str,
    model: str,
    framework: str,
    output_kind: str,
    output_name: str,
    input_shape: str,
    parity_tolerance: float,
    strict_model_checks: bool,
) -> str:
    """Convert a TorchScript file or exported program to ONNX, with parity and checks."""
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
        converter="pytorch",
    )


@dsl.component(base_image=CONVERT_TENSORFLOW, install_kfp_package=False)
def convert_tensorflow(
    run_uri: str,
    model: str,
    framework: str,
    output_kind: str,
    output_name: str,
    input_shape: str,
    parity_tolerance: float,
    strict_model_checks: bool,
) -> str:
    """Convert a Keras file or SavedModel to ONNX (tf2onnx), with parity and checks."""
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
        converter="tensorflow",
    )


@dsl.component(base_image=CONVERT_PADDLE, install_kfp_package=False)
def convert_paddle(
    run_uri: str,
    model: str,
    framework: str,
    output_kind: str,
    output_name: str,
    input_shape: str,
    parity_tolerance: float,
    strict_model_checks: bool,
) -> str:
    """Convert a Paddle inference model to ONNX (paddle2onnx), with parity and checks."""
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
        converter="paddle",
    )
