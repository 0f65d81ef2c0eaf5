# Exercises firmware/backlog.py on the interpreter running it, in the current directory.
# Prints one JSON object with what it observed. Runs on MicroPython and CPython.
import json
import os

from firmware import backlog

out = {}
msgs = [(b"solar", b'{"seq":%d}' % i, False) for i in range(1, 6)]
backlog.clear()
out["dropped"] = backlog.append(msgs[:3])
r = backlog.Reader(0)
out["count"] = r.count()
got = []
for topic, payload, _ in r:
    got.append(json.loads(payload)["seq"])
    if len(got) == 2:
        break  # the session died after handing out the second message
r.close()
out["first_pass"] = got
out["done_after_first"] = r.done
# Resuming at .done gives the unacknowledged one again, then the rest.
r2 = backlog.Reader(r.done)
out["resumed"] = [json.loads(p)["seq"] for _, p, _ in r2]
out["finished"] = r2.finished()
# A power cut mid-line: the torn half is skipped and cannot merge with the next record.
with open(backlog.BACKLOG_FILE, "ab") as f:
    f.write(b'solar\t{"seq":9')
backlog.append(msgs[3:])
out["after_torn"] = [json.loads(p)["seq"] for _, p, _ in backlog.Reader(0)]
out["bad_offset"] = backlog.Reader(10**9).done
backlog.clear()
out["cleared"] = backlog.size()
print(json.dumps(out))
