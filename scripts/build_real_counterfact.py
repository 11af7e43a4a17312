"""Write ``src/lmlab/assets/edit/real_counterfact.jsonl``: 100 real-world facts as CounterFact records, for editing
a real checkpoint (SmolLM2-135M-Instruct, docs/real-model.md).

Written by hand for this purpose (not taken from CounterFact): seven relations (a landmark's city, a company's
headquarters, a country's capital, a person's mother tongue, a country's official language, a company's founder,
an athlete's sport), each with an edit prompt and two paraphrase prompts. Every subject is edited at most once
and no neighbourhood subject is an edited subject (a subject's key does not depend on the relation that follows
it, so two edits of one subject would conflict). Each record holds, as in CounterFact (Meng et al. 2022, App. C):

- ``requested_rewrite``: ``prompt`` with ``{}``, ``subject``, ``target_true`` / ``target_new`` (``{"str": ...}``),
  ``relation_id``; ``target_new`` is another object of the same relation (seeded choice);
- ``paraphrase_prompts``: the same fact in the two paraphrase templates;
- ``neighborhood_prompts``: the relation's prompt for two subjects that are never edited, preferring subjects with
  the same true object (CounterFact's neighbourhood); ``neighborhood_targets`` (an lmlab addition) gives each one's
  true object, since a neighbour from another object needs its own answer.

Records are ordered round-robin over the relations, so that the first 10 cover all seven.

    python scripts/build_real_counterfact.py          # rewrites the file (deterministic)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "lmlab" / "assets" / "edit" / "real_counterfact.jsonl"

# relation: (edit prompt, paraphrases, {object: (edited subjects, neighbour-only subjects)})
RELATIONS = {
    "landmark_city": ("{} is located in the city of",
                      ("{}, a famous landmark, stands in the city of", "Tourists who want to see {} travel to the city of"), {
        "Paris": (["Eiffel Tower", "Louvre Museum", "Arc de Triomphe", "Notre-Dame Cathedral"], ["Musée d'Orsay", "Champs-Élysées"]),
        "Rome": (["Colosseum", "Trevi Fountain", "Pantheon"], ["Spanish Steps", "Roman Forum"]),
        "London": (["Big Ben", "Tower Bridge", "Buckingham Palace"], ["Trafalgar Square", "Westminster Abbey"]),
        "New York": (["Statue of Liberty", "Empire State Building", "Central Park"], ["Times Square", "Brooklyn Bridge"]),
        "Berlin": (["Brandenburg Gate", "Reichstag building"], ["Checkpoint Charlie"]),
        "Moscow": (["Red Square", "Saint Basil's Cathedral"], ["Bolshoi Theatre"]),
        "Barcelona": (["Sagrada Familia", "Park Güell"], ["Camp Nou"]),
        "Athens": (["Acropolis", "Parthenon"], ["Temple of Olympian Zeus"]),
        "Venice": (["Rialto Bridge", "St Mark's Basilica"], ["Doge's Palace"]),
        "Beijing": (["Forbidden City", "Tiananmen Square"], ["Temple of Heaven"]),
        "Istanbul": (["Hagia Sophia", "Blue Mosque"], ["Topkapi Palace"]),
        "San Francisco": (["Golden Gate Bridge", "Alcatraz Island"], ["Fisherman's Wharf"]),
        "Rio de Janeiro": (["Christ the Redeemer", "Copacabana Beach"], ["Sugarloaf Mountain"]),
        "Dubai": (["Burj Khalifa"], ["Palm Jumeirah"]),
        "Amsterdam": (["Rijksmuseum", "Anne Frank House"], ["Dam Square"]),
        "Florence": (["Uffizi Gallery", "Ponte Vecchio"], ["Palazzo Pitti"]),
    }),
    "company_hq": ("The headquarters of {} are in the city of",
                   ("{} has its headquarters in the city of", "{} is headquartered in the city of"), {
        "Tokyo": (["Sony", "Honda", "Hitachi"], ["Bridgestone"]),
        "Seattle": (["Starbucks"], ["Nordstrom"]),
        "Munich": (["BMW", "Siemens"], ["Allianz"]),
        "Stuttgart": (["Porsche"], ["Mercedes-Benz"]),
        "Kyoto": (["Nintendo"], ["Kyocera"]),
        "Seoul": (["Hyundai"], ["LG Electronics"]),
        "Paris": (["Louis Vuitton"], ["BNP Paribas"]),
        "Gothenburg": (["Volvo"], ["SKF"]),
        "Amsterdam": (["Heineken"], ["Booking.com"]),
    }),
    "capital": ("The capital of {} is", ("{}'s capital city is", "The capital city of {} is"), {
        "Paris": (["France"], []), "Tokyo": (["Japan"], []), "Rome": (["Italy"], []), "Berlin": (["Germany"], []),
        "Madrid": (["Spain"], []), "Cairo": (["Egypt"], []), "Ottawa": (["Canada"], []), "Moscow": (["Russia"], []),
        "Athens": (["Greece"], []), "Beijing": (["China"], []), "Nairobi": (["Kenya"], []),
        "Buenos Aires": (["Argentina"], []), "Bangkok": (["Thailand"], []), "Lima": (["Peru"], []),
        "Canberra": (["Australia"], []),
        "Lisbon": ([], ["Portugal"]), "Helsinki": ([], ["Finland"]), "Brussels": ([], ["Belgium"]),
        "Prague": ([], ["the Czech Republic"]), "Oslo": ([], ["Norway"]), "Dublin": ([], ["Ireland"]),
    }),
    "mother_tongue": ("The mother tongue of {} is", ("{} is a native speaker of", "The first language {} learned to speak was"), {
        "French": (["Emmanuel Macron", "Victor Hugo", "Jacques Chirac"], ["Charles de Gaulle", "Albert Camus"]),
        "Russian": (["Vladimir Putin", "Leo Tolstoy"], ["Fyodor Dostoevsky"]),
        "German": (["Angela Merkel", "Johann Wolfgang von Goethe"], ["Ludwig van Beethoven"]),
        "Spanish": (["Pablo Picasso", "Miguel de Cervantes"], ["Gabriel García Márquez"]),
        "Italian": (["Dante Alighieri", "Silvio Berlusconi"], ["Giuseppe Verdi"]),
        "Japanese": (["Hayao Miyazaki", "Akira Kurosawa"], ["Haruki Murakami"]),
        "Dutch": (["Vincent van Gogh"], ["Rembrandt"]),
    }),
    "official_language": ("The official language of {} is", ("In {}, the official language is", "People in {} officially speak"), {
        "Portuguese": (["Brazil"], ["Mozambique"]),
        "Spanish": (["Mexico", "Chile", "Colombia"], ["Venezuela", "Cuba"]),
        "German": (["Austria"], ["Liechtenstein"]),
        "Polish": (["Poland"], []),
        "Swedish": (["Sweden"], []),
        "Dutch": (["Netherlands"], ["Suriname"]),
        "Persian": (["Iran"], []),
        "Hungarian": (["Hungary"], []),
        "Danish": ([], ["Denmark"]),
        "Norwegian": ([], ["Norway"]),
    }),
    "founder": ("{} was founded by", ("The founder of {} is", "{} was started by"), {
        "Bill Gates": (["Microsoft"], []), "Steve Jobs": (["Apple"], []), "Jeff Bezos": (["Amazon"], []),
        "Mark Zuckerberg": (["Facebook"], []), "Elon Musk": (["SpaceX"], []), "Larry Ellison": (["Oracle"], []),
        "Jack Ma": (["Alibaba"], []), "Richard Branson": (["Virgin Group"], []),
        "Larry Page": ([], ["Google"]), "Reed Hastings": ([], ["Netflix"]), "Pierre Omidyar": ([], ["eBay"]),
    }),
    "sport": ("{} professionally plays the sport of", ("The sport that {} plays is", "{} is a professional player of"), {
        "basketball": (["LeBron James"], ["Michael Jordan"]),
        "tennis": (["Roger Federer", "Serena Williams"], ["Rafael Nadal"]),
        "golf": (["Tiger Woods"], ["Phil Mickelson"]),
        "baseball": (["Babe Ruth"], ["Derek Jeter"]),
        "football": (["Lionel Messi"], ["Cristiano Ronaldo"]),
    }),
}


def build(n: int = 100, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    per_relation = []
    for rel, (prompt, paraphrases, objects) in RELATIONS.items():
        pool = [(s, o) for o, (_, neigh) in objects.items() for s in neigh]
        names = sorted(objects)
        records = []
        for obj, (edited, _) in objects.items():
            for subject in edited:
                new = rng.choice([o for o in names if o != obj])
                same = [p for p in pool if p[1] == obj]
                other = [p for p in pool if p[1] != obj and p[1] != new]
                neigh = (same + rng.sample(other, len(other)))[:2]
                records.append({
                    "requested_rewrite": {"prompt": prompt, "subject": subject, "relation_id": rel,
                                          "target_true": {"str": obj}, "target_new": {"str": new}},
                    "paraphrase_prompts": [p.replace("{}", subject) for p in paraphrases],
                    "neighborhood_prompts": [prompt.replace("{}", s) for s, _ in neigh],
                    "neighborhood_targets": [o for _, o in neigh],
                })
        per_relation.append(records)
    ordered = []
    while any(per_relation):
        for records in per_relation:
            if records:
                ordered.append(records.pop(0))
    subjects = [r["requested_rewrite"]["subject"] for r in ordered[:n]]
    assert len(set(subjects)) == len(subjects), "an edited subject repeats"
    neighbours = {p for r in ordered for p in r["neighborhood_prompts"]}
    clash = [(s, p) for s in subjects for p in neighbours if f" {s} " in f" {p} "]
    assert not clash, f"a neighbour prompt names an edited subject: {clash}"
    return [{"case_id": i, **r} for i, r in enumerate(ordered[:n])]


def main() -> None:
    records = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    print(f"{len(records)} records -> {OUT}")


if __name__ == "__main__":
    main()
