"""Text search through pymongo, as MongoDB 7.0 does it: text indexes (simple, compound,
weighted, wildcard, default_language, language_override), one per collection, `$text` with
terms, phrases, negations, case and diacritic sensitivity and languages, `$meta: "textScore"`
in projections and sorts (scores checked against mongod's formula worked by hand), the errors,
a transaction, `explain` and aggregation."""

from __future__ import annotations

import pytest
from pymongo.errors import OperationFailure

# mongod's score of a term in one string of a field with weight w (text index version 3):
#   w * freq * (0.5 * count / n + 0.5) * (1.1 if the string is exactly the term else 1)
# with count the term's occurrences among the string's n terms (stop words left out) and
# freq = 1 + 1/2 + 1/4 + ... (one halving per repeat). A document's score sums its scores of
# the query's terms.
DOCS = [
    # title "Coffee": coffe 1 of 1 term, weight 10: 10 * 1 * 1 = 10 ("Coffee" != "coffe").
    # body "coffee shop coffee": coffe twice of 3: freq 1.5, coeff 0.5*2/3+0.5 -> 1.25.
    # "coffee" scores 11.25.
    {"_id": 1, "title": "Coffee", "body": "coffee shop coffee"},
    # body "green tea and coffee": "and" is a stop word; coffe 1 of 3 -> 0.5/3 + 0.5 = 0.6667.
    # title "Tea": the whole string is the term "tea": 10 * 1.1 = 11.
    {"_id": 2, "title": "Tea", "body": "green tea and coffee"},
    # title "Running" -> run: 10; body "The runner was running late": runner, run, late -> run
    # 0.6667. "run" scores 10.6667.
    {"_id": 3, "title": "Running", "body": "The runner was running late"},
    {"_id": 4, "body": "Café au lait"},
    {"_id": 5, "body": "los cafés son buenos", "language": "spanish"},
]


def setup(db):
    db.articles.create_index(
        [("title", "text"), ("body", "text")], weights={"title": 10}, name="articles_text"
    )
    db.articles.insert_many(DOCS)
    return db.articles


def ids(cursor):
    return sorted(d["_id"] for d in cursor)


def search(coll, text, **options):
    return ids(coll.find({"$text": {"$search": text, **options}}))


def test_index_is_normalized_as_mongod_stores_it(db):
    setup(db)
    info = db.articles.index_information()["articles_text"]
    assert info["key"] == [("_fts", "text"), ("_ftsx", 1)]
    assert info["weights"] == {"body": 1, "title": 10}
    assert info["default_language"] == "english"
    assert info["language_override"] == "language"
    assert info["textIndexVersion"] == 3


def test_a_second_text_index_is_refused(db):
    db.c.create_index([("a", 1), ("b", "text"), ("c", 1)])
    db.c.create_index([("a", 1), ("b", "text"), ("c", 1)])  # the same: a no-op
    with pytest.raises(OperationFailure) as err:
        db.c.create_index([("a", 1), ("b", 1), ("c", "text")])
    assert err.value.code == 67
    assert "only one text index per collection" in str(err.value)
    with pytest.raises(OperationFailure) as err:
        db.c.create_index([("a", 1), ("_fts", "text"), ("_ftsx", 1), ("c", 1)], weights={"b": 1, "d": 1})
    assert err.value.code == 85
    assert len(db.c.index_information()) == 2


@pytest.mark.parametrize(
    "key,options",
    [
        ([("a", "text"), ("b", 1), ("c", "text")], {}),
        ([("a", "text"), ("b", 2)], {}),
        ([("a", "text")], {"default_language": "spanglish"}),
        ([("a", "text")], {"language_override": "a.b"}),
        ([("a", "text")], {"weights": {"b": 100000}}),
        ([("a", "text")], {"weights": {"b": 0.5}}),
        ([("a", "text")], {"textIndexVersion": 1}),
        ([("a", 1)], {"weights": {"a": 1}}),
    ],
)
def test_invalid_text_index_options_are_refused_with_67(db, key, options):
    with pytest.raises(OperationFailure) as err:
        db.c.create_index(key, **options)
    assert err.value.code == 67


def test_terms_phrases_and_negations(db):
    coll = setup(db)
    assert search(coll, "coffee") == [1, 2]
    assert search(coll, "coffee tea") == [1, 2]
    assert search(coll, "coffee -green") == [1]
    assert search(coll, '"coffee shop"') == [1]
    assert search(coll, 'coffee -"green tea"') == [1]
    assert search(coll, "running") == [3]  # stemmed: run
    assert search(coll, "runs") == [3]
    assert search(coll, "the and was") == []  # stop words only
    assert search(coll, "-coffee") == []  # no positive term


def test_case_diacritics_and_languages(db):
    coll = setup(db)
    assert search(coll, "cafe") == [4]
    assert search(coll, "CAFÉ") == [4]
    assert search(coll, "café", **{"$diacriticSensitive": True}) == [4]
    assert search(coll, "cafe", **{"$diacriticSensitive": True}) == []
    assert search(coll, "Coffee", **{"$caseSensitive": True}) == [1]
    assert search(coll, "coffee", **{"$caseSensitive": True}) == [1, 2]
    # The document's language field: Spanish stems "buenos" -> "buen"; English does not.
    assert search(coll, "buenos", **{"$language": "es"}) == [5]
    assert search(coll, "buenos") == []
    # none: no stemming and no stop words; the index holds "run", not "running".
    assert search(coll, "running", **{"$language": "none"}) == []
    with pytest.raises(OperationFailure) as err:
        search(coll, "x", **{"$language": "klingon"})
    assert err.value.code == 2


def test_text_score_projection_and_sort(db):
    coll = setup(db)
    docs = list(
        coll.find({"$text": {"$search": "coffee"}}, {"score": {"$meta": "textScore"}}).sort(
            [("score", {"$meta": "textScore"})]
        )
    )
    assert [d["_id"] for d in docs] == [1, 2]
    assert docs[0]["score"] == pytest.approx(11.25)
    assert docs[1]["score"] == pytest.approx(0.5 / 3 + 0.5)
    assert docs[0]["title"] == "Coffee"  # $meta alone keeps the other fields
    run = coll.find_one({"$text": {"$search": "run tea"}}, {"_id": 1, "s": {"$meta": "textScore"}})
    assert set(run) == {"_id", "s"}
    scores = {
        d["_id"]: d["s"]
        for d in coll.find({"$text": {"$search": "run tea"}}, {"s": {"$meta": "textScore"}})
    }
    assert scores[3] == pytest.approx(10 + 0.5 / 3 + 0.5)
    # "Tea" is the whole title: 10 * 1.1; body "green tea and coffee": tea 1 of 3 terms.
    assert scores[2] == pytest.approx(11 + 0.5 / 3 + 0.5)


def test_text_needs_an_index_and_meta_needs_text(db):
    db.plain.insert_one({"a": "coffee"})
    with pytest.raises(OperationFailure) as err:
        list(db.plain.find({"$text": {"$search": "coffee"}}))
    assert err.value.code == 27
    assert "text index required" in str(err.value)
    coll = setup(db)
    with pytest.raises(OperationFailure) as err:
        list(coll.find({}, {"s": {"$meta": "textScore"}}))
    assert err.value.code == 40218


def test_placement_rules(db):
    coll = setup(db)
    for bad in (
        {"$nor": [{"$text": {"$search": "coffee"}}]},
        {"$and": [{"$text": {"$search": "a"}}, {"$text": {"$search": "b"}}]},
    ):
        with pytest.raises(OperationFailure) as err:
            list(coll.find(bad))
        assert err.value.code == 2
    assert ids(coll.find({"$and": [{"$text": {"$search": "coffee"}}, {"_id": 2}]})) == [2]


def test_compound_wildcard_and_default_language(db):
    db.comp.create_index([("cat", 1), ("body", "text")])
    db.comp.insert_many(
        [{"_id": 1, "cat": "a", "body": "red apple"}, {"_id": 2, "cat": "b", "body": "red car"}]
    )
    assert ids(db.comp.find({"cat": "b", "$text": {"$search": "red"}})) == [2]
    with pytest.raises(OperationFailure) as err:
        list(db.comp.find({"$text": {"$search": "red"}}))
    assert err.value.code == 291

    db.wild.create_index([("$**", "text")])
    db.wild.insert_many(
        [{"_id": 1, "a": {"b": "hello world"}}, {"_id": 2, "c": ["foo bar", "baz"]}, {"_id": 3, "n": 5}]
    )
    assert ids(db.wild.find({"$text": {"$search": "world"}})) == [1]
    assert ids(db.wild.find({"$text": {"$search": "baz hello"}})) == [1, 2]

    db.es.create_index([("body", "text")], default_language="spanish")
    db.es.insert_many([{"_id": 1, "body": "los gatos"}, {"_id": 2, "body": "the cats"}])
    assert ids(db.es.find({"$text": {"$search": "gato"}})) == [1]
    assert ids(db.es.find({"$text": {"$search": "los"}})) == []  # a Spanish stop word
    # English would stem the query to "cat"; the index holds the Spanish stem "cats".
    assert ids(db.es.find({"$text": {"$search": "cats", "$language": "english"}})) == []
    assert ids(db.es.find({"$text": {"$search": "cats", "$language": "none"}})) == [2]


def test_language_override_field(db):
    db.lo.create_index([("body", "text")], language_override="idioma")
    db.lo.insert_many(
        [{"_id": 1, "body": "corriendo", "idioma": "spanish"}, {"_id": 2, "body": "corriendo"}]
    )
    # Spanish stems "corriendo" to "corr"; English leaves it whole.
    assert ids(db.lo.find({"$text": {"$search": "corriendo", "$language": "spanish"}})) == [1]
    assert ids(db.lo.find({"$text": {"$search": "corriendo"}})) == [2]
    with pytest.raises(OperationFailure):
        db.lo.insert_one({"body": "x", "idioma": "spanglish"})


def test_transaction_sees_its_own_insert(client, db):
    coll = setup(db)
    with client.start_session() as s:
        with s.start_transaction():
            coll.insert_one({"_id": 10, "body": "espresso macchiato"}, session=s)
            assert ids(coll.find({"$text": {"$search": "espresso"}}, session=s)) == [10]
            assert ids(coll.find({"$text": {"$search": "espresso"}})) == []
    assert ids(coll.find({"$text": {"$search": "espresso"}})) == [10]
    coll.delete_one({"_id": 10})
    assert ids(coll.find({"$text": {"$search": "espresso"}})) == []


def test_explain_shows_the_text_index(db):
    coll = setup(db)
    explain = coll.find({"$text": {"$search": "coffee -green \"coffee shop\""}}).explain()
    plan = explain["queryPlanner"]["winningPlan"]
    assert plan["stage"] == "TEXT_MATCH"
    assert plan["indexName"] == "articles_text"
    parsed = plan["parsedTextQuery"]
    assert parsed == {
        "terms": ["coffe", "shop"],
        "negatedTerms": ["green"],
        "phrases": ["coffee shop"],
        "negatedPhrases": [],
    }
    stats = explain["executionStats"]
    assert stats["nReturned"] == 1
    # Keys: one per (term, document): coffe in 1 and 2, shop in 1; documents fetched once each.
    assert stats["totalKeysExamined"] == 3
    assert stats["totalDocsExamined"] == 2


def test_aggregation_match_text_and_sort_by_score(db):
    coll = setup(db)
    out = list(
        coll.aggregate(
            [
                {"$match": {"$text": {"$search": "coffee"}}},
                {"$sort": {"score": {"$meta": "textScore"}}},
                {"$project": {"title": 1, "score": {"$meta": "textScore"}}},
            ]
        )
    )
    assert [d["_id"] for d in out] == [1, 2]
    assert out[0]["score"] == pytest.approx(11.25)
    with pytest.raises(OperationFailure) as err:
        list(coll.aggregate([{"$match": {}}, {"$match": {"$text": {"$search": "coffee"}}}]))
    assert err.value.code == 17313


def test_count_distinct_update_and_delete_with_text(db):
    coll = setup(db)
    assert coll.count_documents({"$text": {"$search": "coffee"}}) == 2
    assert db.command("count", "articles", query={"$text": {"$search": "coffee"}})["n"] == 2
    assert sorted(coll.distinct("title", {"$text": {"$search": "coffee"}})) == ["Coffee", "Tea"]
    assert coll.update_many({"$text": {"$search": "coffee"}}, {"$set": {"hot": True}}).modified_count == 2
    assert ids(coll.find({"hot": True})) == [1, 2]
    assert coll.delete_many({"$text": {"$search": "green"}}).deleted_count == 1
    assert search(coll, "coffee") == [1]
    # The new terms of an updated document are found, the old ones gone.
    coll.update_one({"_id": 1}, {"$set": {"body": "espresso", "title": "Bar"}})
    assert search(coll, "coffee") == []
    assert search(coll, "espresso") == [1]


def test_aggregation_in_a_transaction_scores_too(client, db):
    coll = setup(db)
    pipeline = [
        {"$match": {"$text": {"$search": "coffee tea"}}},
        {"$addFields": {"score": {"$meta": "textScore"}}},
        {"$sort": {"score": -1}},
    ]
    with client.start_session() as s:
        with s.start_transaction():
            out = list(coll.aggregate(pipeline, session=s))
    # tea: "Tea" title 11 + body 0.6667; coffe: body 0.6667 -> doc 2 = 12.3333; doc 1 = 11.25.
    assert [d["_id"] for d in out] == [2, 1]
    assert out[0]["score"] == pytest.approx(11 + 2 * (0.5 / 3 + 0.5))


def test_get_more_keeps_matching_and_scoring(db):
    db.many.create_index([("body", "text")])
    db.many.insert_many([{"_id": i, "body": "alpha " + "beta " * (i % 3)} for i in range(30)])
    cur = db.many.find({"$text": {"$search": "alpha"}}, {"s": {"$meta": "textScore"}}, batch_size=4)
    docs = list(cur)
    assert sorted(d["_id"] for d in docs) == list(range(30))
    # "alpha" alone: 1 of 1 term, and the string is not just the term ("alpha " has a space).
    assert {round(d["s"], 6) for d in docs if d["_id"] % 3 == 0} == {1.0}
    # alpha then beta twice: alpha 1 of 3 terms -> 0.5/3 + 0.5.
    assert {round(d["s"], 6) for d in docs if d["_id"] % 3 == 2} == {round(0.5 / 3 + 0.5, 6)}
    top = list(
        db.many.find({"$text": {"$search": "alpha"}}, {"s": {"$meta": "textScore"}})
        .sort([("s", {"$meta": "textScore"}), ("_id", 1)])
        .limit(3)
    )
    assert [d["_id"] for d in top] == [0, 3, 6]


def test_long_words_are_indexed_and_found(db):
    # mongod's fts_index1.js: a 1 MiB word is indexed and found again.
    db.big.create_index([("a", "text")])
    db.big.insert_many([{"_id": 0, "a": "a" * (1024 * 1024)}, {"_id": 1, "a": "b" * (1024 * 1024)}])
    assert ids(db.big.find({"$text": {"$search": "a" * (1024 * 1024)}})) == [0]
