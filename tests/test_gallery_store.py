import sqlite3
import threading

import pytest

from huabu.core.errors import InvalidRequest
from huabu.core.gallery import Gallery


@pytest.fixture(params=["fts5", "like"])
def gallery(request, tmp_path):
    gallery = Gallery(tmp_path / "db" / "gallery.sqlite")
    if request.param == "like":
        gallery._fts = False  # behave as on an SQLite built without FTS5
    return gallery


def test_add_get_round_trip(gallery, tmp_path):
    params = {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.5, "Size": "64x64", "中文": "水墨"}
    item_id = gallery.add(tmp_path / "00001-5.png", "txt2img", "a red fox", "blurry", params)
    item = gallery.get(item_id)
    assert item.id == item_id
    assert item.path == str(tmp_path / "00001-5.png")
    assert (item.kind, item.prompt, item.negative_prompt) == ("txt2img", "a red fox", "blurry")
    assert item.params == params
    assert item.created > 0
    assert gallery.get(item_id + 1000) is None


def test_wal_mode_and_persistence_across_reopen(tmp_path):
    db = tmp_path / "g.sqlite"
    first = Gallery(db)
    ids = [first.add(f"{i}.png", "txt2img", f"prompt {i}", "", {"Seed": i}) for i in range(3)]
    reopened = Gallery(db)
    assert [item.id for item in reopened.search()] == ids[::-1]
    assert reopened.get(ids[1]).params == {"Seed": 1}
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_search_newest_first_limit_offset(gallery):
    ids = [gallery.add(f"{i}.png", "txt2img", f"cat number {i}", "", {}) for i in range(10)]
    assert [i.id for i in gallery.search(limit=3)] == ids[::-1][:3]
    assert [i.id for i in gallery.search(limit=3, offset=3)] == ids[::-1][3:6]
    assert gallery.search(limit=0) == []
    assert len(gallery.search()) == 10
    with pytest.raises(InvalidRequest, match="limit"):
        gallery.search(limit=-1)


def test_search_text_is_case_insensitive_substring(gallery):
    fox = gallery.add("a.png", "txt2img", "A Red FOX in snow", "", {})
    cat = gallery.add("b.png", "img2img", "a black cat, red scarf", "", {})
    mountains = gallery.add("c.png", "txt2img", "mountains at dawn", "red", {})  # negative prompt is not searched
    水墨 = gallery.add("d.png", "txt2img", "水墨山水，一只白鹤", "", {})
    assert [i.id for i in gallery.search("red")] == [cat, fox]
    assert [i.id for i in gallery.search("red fox")] == [fox]
    assert [i.id for i in gallery.search("OX")] == [fox]  # 2 characters: below the trigram length
    assert [i.id for i in gallery.search("白鹤")] == [水墨]
    assert [i.id for i in gallery.search("水墨山水")] == [水墨]
    assert [i.id for i in gallery.search("red", kind="img2img")] == [cat]
    assert [i.id for i in gallery.search(kind="txt2img")] == [水墨, mountains, fox]
    assert gallery.search("giraffe") == []
    assert len(gallery.search("   ")) == 4  # blank text is no filter


def test_search_treats_wildcards_and_quotes_literally(gallery):
    pct = gallery.add("a.png", "txt2img", "100% cotton_texture", "", {})
    gallery.add("b.png", "txt2img", "1000 cottonxtexture", "", {})
    quoted = gallery.add("c.png", "txt2img", 'sign saying "hi"', "", {})
    assert [i.id for i in gallery.search("0%")] == [pct]
    assert [i.id for i in gallery.search("n_t")] == [pct]
    assert [i.id for i in gallery.search("%")] == [pct]
    assert [i.id for i in gallery.search('"hi"')] == [quoted]


def test_remove(gallery):
    keep = gallery.add("a.png", "txt2img", "keep me", "", {})
    drop = gallery.add("b.png", "txt2img", "drop me", "", {})
    gallery.remove(drop)
    gallery.remove(drop)  # removing twice is harmless
    assert gallery.get(drop) is None
    assert [i.id for i in gallery.search("me")] == [keep]
    assert [i.id for i in gallery.search("drop")] == []


def test_concurrent_adds_from_threads(gallery):
    errors = []

    def worker(n):
        try:
            for i in range(10):
                gallery.add(f"{n}-{i}.png", "txt2img", f"thread {n} image {i}", "", {"n": n, "i": i})
        except Exception as err:  # surfaced below; a thread's exception is otherwise lost
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    items = gallery.search(limit=1000)
    assert len(items) == 60
    assert len({item.id for item in items}) == 60
    assert {(item.params["n"], item.params["i"]) for item in items} == {(n, i) for n in range(6) for i in range(10)}
    assert len(gallery.search("thread 3 image")) == 10


def test_empty_kind_rejected(gallery):
    with pytest.raises(InvalidRequest, match="kind"):
        gallery.add("a.png", "", "p", "", {})


@pytest.mark.parametrize("text", ["ab\x00", "\x00", "a\x00b", "x\x00\x00y", "cat\x00"])
def test_search_text_with_nul_bytes_is_an_ordinary_search(gallery, tmp_path, text):
    gallery.add(tmp_path / "1.png", "txt2img", "a cat", "", {})
    gallery.add(tmp_path / "2.png", "txt2img", "odd a\x00b prompt", "", {})
    found = [item.prompt for item in gallery.search(text)]
    assert found == (["odd a\x00b prompt"] if text in "odd a\x00b prompt" else [])


def test_each_thread_keeps_one_connection_and_a_forked_child_opens_its_own(tmp_path, monkeypatch):
    from huabu.core import sqlite_wal

    connections = sqlite_wal.ThreadConnections(tmp_path / "t.sqlite", isolation_level=None)
    mine = connections.get()
    mine.execute("CREATE TABLE t (x)")
    mine.execute("INSERT INTO t VALUES (1)")
    seen = {}

    def other() -> None:
        con = connections.get()
        seen["count"] = con.execute("SELECT COUNT(*) FROM t").fetchone()[0]
        seen["same"] = con is connections.get()
        seen["id"] = id(con)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert connections.get() is mine and seen["same"] and seen["id"] != id(mine) and seen["count"] == 1
    monkeypatch.setattr(sqlite_wal.os, "getpid", lambda: -1)  # as in a child after fork
    assert connections.get() is not mine and connections.get().execute("SELECT x FROM t").fetchone() == (1,)

