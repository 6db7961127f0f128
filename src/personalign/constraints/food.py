"""Foods a diet or an allergy rules out: the groups ("meat", "shellfish", "nuts") and the
words :func:`food_words` reads a named food as (for ``avoid_words`` constraints)."""

from __future__ import annotations

import re

MEATS = [
    "meat",
    "beef",
    "pork",
    "chicken",
    "bacon",
    "ham",
    "lamb",
    "turkey",
    "sausage",
    "steak",
    "veal",
    "duck",
    "mutton",
    "venison",
    "pepperoni",
    "salami",
    "prosciutto",
    "chorizo",
    "mince",
]
SEAFOOD = [
    "fish",
    "salmon",
    "tuna",
    "cod",
    "shrimp",
    "prawn",
    "crab",
    "lobster",
    "anchovy",
    "anchovies",
    "sardine",
    "seafood",
    "oyster",
    "mussel",
    "clam",
    "scallop",
    "squid",
]
ANIMAL_PRODUCTS = ["milk", "cheese", "butter", "cream", "yogurt", "egg", "eggs", "honey", "gelatin"]
FOOD_GROUPS: dict[str, list[str]] = {
    "nuts": [
        "nut",
        "nuts",
        "peanut",
        "almond",
        "walnut",
        "cashew",
        "pecan",
        "hazelnut",
        "pistachio",
    ],
    "tree nuts": ["almond", "walnut", "cashew", "pecan", "hazelnut", "pistachio"],
    "peanuts": ["peanut", "peanuts"],
    "peanut": ["peanut", "peanuts"],
    "shellfish": ["shellfish", "shrimp", "prawn", "crab", "lobster", "oyster", "mussel", "clam"],
    "seafood": SEAFOOD,
    "fish": ["fish", "salmon", "tuna", "cod", "anchovy", "anchovies", "sardine"],
    "dairy": ["milk", "cheese", "butter", "cream", "yogurt", "dairy"],
    "lactose": ["milk", "cheese", "butter", "cream", "yogurt", "dairy"],
    "milk": ["milk", "cheese", "butter", "cream", "yogurt", "dairy"],
    "gluten": ["gluten", "wheat", "barley", "rye"],
    "wheat": ["wheat", "gluten"],
    "eggs": ["egg", "eggs"],
    "egg": ["egg", "eggs"],
    "soy": ["soy", "tofu", "soya", "edamame"],
    "meat": MEATS,
    "red meat": ["beef", "pork", "lamb", "steak", "veal", "mutton"],
    "pork": ["pork", "bacon", "ham", "sausage", "pepperoni", "salami", "prosciutto", "chorizo"],
}

_FOODISH = (
    set(FOOD_GROUPS)
    | set(MEATS)
    | set(SEAFOOD)
    | set(ANIMAL_PRODUCTS)
    | {
        "mushrooms",
        "mushroom",
        "onions",
        "onion",
        "garlic",
        "cilantro",
        "coriander",
        "olives",
        "sesame",
        "spicy food",
        "spicy",
        "chili",
        "sugar",
        "tomatoes",
        "tomato",
        "coconut",
        "strawberries",
        "kiwi",
        "celery",
        "mustard",
        "alcohol",
        "coffee",
    }
)


def food_words(food: str) -> list[str]:
    f = food.strip().lower()
    f = re.sub(r"^(?:any|all|the|some|eating)\s+", "", f)
    if f in FOOD_GROUPS:
        return list(FOOD_GROUPS[f])
    if f.endswith("s") and f[:-1] in FOOD_GROUPS:
        return list(FOOD_GROUPS[f[:-1]])
    if f in _FOODISH or f.rstrip("s") in _FOODISH:
        base = f[:-1] if f.endswith("s") and f[:-1] in _FOODISH else f
        return sorted({base, f})
    words = f.split()
    if len(words) > 1:  # "severe peanut", "any other shellfish", "fresh salmon"
        for k in (2, 1):
            tail = " ".join(words[-k:])
            if tail != f:
                found = food_words(tail)
                if found:
                    return found
    return []
