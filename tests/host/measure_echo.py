"""Echo throughput/latency through the offload path, clients in their own process.

Usage: .venv/bin/python tests/host/measure_echo.py afxdp|shm CONNS PIPELINE SECONDS [prof]
"""
import asyncio, struct, sys, time, cProfile, pstats
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
LEN = struct.Struct("!I")

async def client(port, stop, counts, lat, pipeline):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    msg = LEN.pack(64) + b"x" * 64
    n = 0
    while time.monotonic() < stop:
        t0 = time.perf_counter()
        w.write(msg * pipeline)
        await w.drain()
        await r.readexactly(68 * pipeline)
        lat.append(time.perf_counter() - t0)
        n += pipeline
    counts.append(n)
    w.close()

async def clients(port, nconn, pipeline, dur):
    counts, lat = [], []
    stop = time.monotonic() + dur
    t0 = time.monotonic()
    await asyncio.gather(*(client(port, stop, counts, lat, pipeline) for _ in range(nconn)))
    el = time.monotonic() - t0
    lat.sort()
    print(f"{nconn} conns x pipeline {pipeline}: {sum(counts)/el:,.0f} msg/s echoed; "
          f"round trip p50 {lat[len(lat)//2]*1e6:.0f} us p99 {lat[int(len(lat)*.99)]*1e6:.0f} us", flush=True)

if sys.argv[1] == "client":
    asyncio.run(clients(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])))
    sys.exit(0)

from mux_rpc._orchestrate import OffloadOptions, OffloadRuntime
from tests.host.test_integration import serve_echo
backend = sys.argv[1]; nconn, pipeline, dur = sys.argv[2], sys.argv[3], sys.argv[4]
prof = len(sys.argv) > 5

async def main():
    rt = OffloadRuntime(OffloadOptions(queues=2, backend=backend, stats_socket=False))
    async with rt:
        port, task = await serve_echo(rt.host)
        print(rt.backend_name, end=": ", flush=True)
        p = await asyncio.create_subprocess_exec(sys.executable, __file__, "client", str(port), nconn, pipeline, dur)
        if prof:
            pr = cProfile.Profile(); pr.enable()
        await p.wait()
        if prof:
            pr.disable(); pstats.Stats(pr).sort_stats("tottime").print_stats(18)
        st = rt.host.stats
        print(f'  host: messages_in {st.messages_in} credits_sent {st.credits_sent} credits_received {st.credits_received}')
        task.cancel()
asyncio.run(main())
