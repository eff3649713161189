"""A real Triton Inference Server (the tritonserver binary of the nvidia-pytriton wheel, Python backend) on
127.0.0.1 serves an onnxsmith bundle; the test starts and stops it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from onnxsmith.bundle import Bundle
from onnxsmith.serving.batching import BatchPoint, BatchSweep, plan_batching
from onnxsmith.serving import write_serving
from tests.serving.test_serving import compile_digits, parse

pytest.importorskip("tritonclient")
if __import__("importlib").util.find_spec("pytriton") is None:
    pytest.skip("nvidia-pytriton (tritonserver) is not installed (make install adds it)", allow_module_level=True)


@pytest.fixture(scope="module")
def served_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    bundle = compile_digits(tmp_path_factory.mktemp("triton"), "onnxruntime")
    sweep = BatchSweep((BatchPoint(1, 0.40), BatchPoint(4, 0.70)), "test sweep")
    report = plan_batching(sweep, 2000.0, 4.0, requests=4000).to_json()
    assert report["best"]["max_batch"] == 4
    write_serving(bundle, report, "a test sweep")
    return bundle


def test_triton_serves_the_bundle_with_the_same_outputs_and_batches_requests(served_bundle: Bundle) -> None:
    import tritonclient.grpc as grpcclient

    from onnxsmith.serving.check import _inputs, triton_server

    config = parse(served_bundle.path / "serving" / "triton" / "digits_cnn" / "config.pbtxt")
    rng = np.random.default_rng(1)
    images = rng.standard_normal((6, 1, 1, 8, 8)).astype(np.float32)
    with served_bundle:
        want = [served_bundle.run({"image": x})["logits"] for x in images]
    with triton_server(served_bundle.path / "serving" / "triton", "digits_cnn") as address:
        assert address.startswith("127.0.0.1:")
        client = grpcclient.InferenceServerClient(address)
        got: dict[int, np.ndarray] = {}
        done = threading.Semaphore(0)

        def callback(index: int, result, error) -> None:
            assert error is None, error
            got[index] = result.as_numpy("logits")
            done.release()

        for index, x in enumerate(images):  # sent together: the dynamic batcher joins them (max batch 4)
            item = grpcclient.InferInput("image", [1, 1, 8, 8], "FP32")
            item.set_data_from_numpy(x)
            client.async_infer("digits_cnn", [item], outputs=[grpcclient.InferRequestedOutput("logits")], callback=lambda result, error, i=index: callback(i, result, error))
        for _ in images:
            assert done.acquire(timeout=60)
        deadline = time.monotonic() + 10  # the server counts a request just after answering it
        while True:
            stats = client.get_inference_statistics(model_name="digits_cnn", as_json=True)["model_stats"][0]
            if int(stats.get("inference_count", 0)) >= len(images) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        inputs, outputs = _inputs(served_bundle, True)
        assert client.infer("digits_cnn", inputs, outputs=outputs).as_numpy("logits").shape == (1, 10)
    for index, logits in enumerate(want):
        np.testing.assert_allclose(got[index], logits, rtol=0, atol=1e-5)
    assert int(stats["inference_count"]) == len(images) and config.max_batch_size == 4
    with pytest.raises(Exception):  # stopped: nothing answers on that port any more
        grpcclient.InferenceServerClient(address).is_server_live()


def test_serve_check_measures_beside_the_calibrated_simulation(served_bundle: Bundle) -> None:
    from onnxsmith.serving.check import serve_check

    result = serve_check(served_bundle, rate=150.0, seconds=2.0)
    measured, predicted = result["measured"], result["predicted"]
    assert measured["completed"] == measured["requests"] == 300 and measured["failures"] == 0
    assert 0 < measured["p50_ms"] <= measured["p99_ms"] and measured["throughput_per_s"] > 0
    assert predicted["rate_per_s"] == 150.0 and predicted["max_batch"] == 4
    assert result["overhead"]["batch_ms"] > 0  # gRPC and the Python backend cost more than the bundle's 0.4 ms model
    assert predicted["p50_ms"] > result["predicted_without_overhead"]["p50_ms"]
    assert result["settings"]["max_queue_delay_ms"] == pytest.approx(
        json.loads((served_bundle.path / "serving" / "serving.json").read_text())["best"]["max_delay_ms"], abs=1e-3)
    assert json.loads((served_bundle.path / "serving" / "serve-check.json").read_text())["rate_per_s"] == 150.0
