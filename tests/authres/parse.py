#!/usr/bin/python3
"""Parses Authentication-Results values with the independent `authres` library (Debian's
python3-authres): values on stdin separated by NUL, one JSON object per value on stdout."""
import json
import sys

import authres

for value in sys.stdin.read().split("\0"):
    if not value:
        continue
    try:
        header = authres.AuthenticationResultsHeader.parse("Authentication-Results:" + value)
        results = [
            {
                "method": r.method,
                "result": r.result,
                "reason": r.reason,
                "properties": [[p.type, p.name, p.value] for p in r.properties],
            }
            for r in header.results
        ]
        print(json.dumps({"authserv_id": header.authserv_id, "results": results}))
    except Exception as e:  # a value the parser refuses is a failure of ours
        print(json.dumps({"error": repr(e)}))
