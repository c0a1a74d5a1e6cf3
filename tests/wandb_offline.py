"""Read back what a W&B run wrote offline (``<dir>/wandb/offline-run-*/run-<id>.wandb``) without a W&B server.

The file is a LevelDB-style log (7-byte file header, 32 KiB blocks, records ``crc32 | length | type`` split across
blocks as FULL / FIRST / MIDDLE / LAST) of ``wandb_internal_pb2.Record`` protobufs.
"""

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    data, position, pending = Path(path).read_bytes(), HEADER, b""
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        _checksum, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        if left < HEADER or (length == 0 and kind == 0):  # block trailer / padding
            position += left
            continue
        chunk = data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def offline_run(run_folder: Path, timeout_s: float = 60) -> dict:
    """``{"name", "group", "id", "config", "history"}`` of one ``offline-run-*`` folder (config merged in order).

    W&B's service process writes the file after ``finish()`` returns; this waits for the run's exit record.
    """
    (log,) = Path(run_folder).glob("run-*.wandb")
    deadline = time.monotonic() + timeout_s
    while not any(record.WhichOneof("record_type") == "exit" for record in records(log)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{log}: no exit record after {timeout_s} s")
        time.sleep(0.5)
    run: dict = {"config": {}, "history": []}
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run |= {"name": record.run.display_name, "group": record.run.run_group, "id": record.run.run_id}
            run["config"] |= {item.key: json.loads(item.value_json) for item in record.run.config.update}
        elif kind == "config":
            run["config"] |= {item.key: json.loads(item.value_json) for item in record.config.update}
        elif kind == "history":
            run["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.history.item})
    return run
