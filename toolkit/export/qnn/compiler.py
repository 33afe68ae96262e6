"""Run in a child process by compile.py: compile QDQ graphs into QNN context binaries for the HTP
with onnxruntime-qnn (its x86-64 offline preparer), CPU fallback disabled, and print a JSON line with
the time and the process's peak memory. With sharing, the graphs go into one context binary over one
copy of their common weights (the last session writes it).

    python -m toolkit.export.qnn.compiler SPEC.json
SPEC: {"graphs": [[qdq.onnx, out_ctx.onnx], ...], "provider": {QNN provider options}, "share": bool,
       "log_level": onnxruntime's (0, verbose: the QNN EP says why it refuses each node)}
"""

from __future__ import annotations

import json
import resource
import sys
import time


def session_options(devices, provider: dict[str, str], config: dict[str, str], log_level: int = 2):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = log_level
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    options.add_provider_for_devices(devices, provider)
    return options


def qnn_devices():
    import onnxruntime as ort
    import onnxruntime_qnn

    if not any(d.ep_name == "QNNExecutionProvider" for d in ort.get_ep_devices()):
        ort.register_execution_provider_library("QNNExecutionProvider", onnxruntime_qnn.get_library_path())
    return [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]


def main(spec_path: str) -> None:
    import onnxruntime as ort

    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    devices = qnn_devices()
    start = time.time()
    sessions = []
    graphs = spec["graphs"]
    for k, (source, target) in enumerate(graphs):
        config = {
            "session.disable_cpu_ep_fallback": "1",
            "ep.context_enable": "1",
            "ep.context_embed_mode": "0",
            "ep.context_file_path": target,
        }
        if spec["share"]:
            config["ep.share_ep_contexts"] = "1"
            if k == len(graphs) - 1:
                config["ep.stop_share_ep_contexts"] = "1"
        options = session_options(devices, spec["provider"], config, spec.get("log_level", 2))
        sessions.append(ort.InferenceSession(source, options))
        print(json.dumps({"compiled": target}), flush=True)
    del sessions
    print(json.dumps({"seconds": round(time.time() - start, 1), "peak_mb": round(peak_mb())}), flush=True)


def peak_mb() -> float:
    """This process's peak resident memory since its exec (VmHWM; ru_maxrss would also count the
    parent's memory that the fork copied)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main(sys.argv[1])
