import asyncio

from oqron_nats import JobState, queue


async def test_add_and_run(client):
    done = asyncio.Event()
    seen = []

    async def handler(ctx):
        seen.append(ctx.data)
        ctx.progress(50, "half")
        done.set()
        return {"ok": True, "n": ctx.data["n"]}

    q = queue("smoke", handler, client=client)
    async with q:
        job = await q.add({"n": 1})
        assert job.state == JobState.WAITING
        await asyncio.wait_for(done.wait(), 10)
        for _ in range(100):
            j = await q.get_job(job.id)
            if j.state == JobState.COMPLETED:
                break
            await asyncio.sleep(0.05)
        assert j.state == JobState.COMPLETED, j
        assert j.result == {"ok": True, "n": 1}
        assert seen == [{"n": 1}]
