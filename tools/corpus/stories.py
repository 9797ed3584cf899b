#!/usr/bin/python3
"""Seeded generator of simple children's stories (plain English, public domain
by construction: every sentence comes from the templates in this file).

  /usr/bin/python3 tools/corpus/stories.py --seed 1 --bytes 4000000 > stories.txt
  /usr/bin/python3 tools/corpus/stories.py --seed 2 --bytes 3000000 --formfeed > build/corpus/stories_extra.txt

Stories are separated by a blank line.  The same seed and size give the same
output on every machine (only Python's `random` with an explicit seed is used).
"""
import argparse
import random
import sys

NAMES_GIRL = ["Lily", "Mia", "Emma", "Sara", "Anna", "Lucy", "Zoe", "Ella", "Rosa", "Nora", "Ruby",
              "Maya", "Ivy", "Hannah", "Amy", "Kate", "Molly", "Daisy", "Grace", "Jane", "Alice",
              "Clara", "Tess", "Wendy", "Polly", "Susan", "Laura", "Nina", "Olive", "Hazel"]
NAMES_BOY = ["Tom", "Ben", "Sam", "Max", "Jack", "Leo", "Tim", "Joe", "Finn", "Noah", "Oliver",
             "Peter", "Henry", "Jake", "Ned", "Paul", "Luke", "Adam", "Owen", "Toby", "Eli",
             "Danny", "Simon", "Hugo", "Milo", "Oscar", "Felix", "Charlie", "Harry", "Ryan"]
ANIMALS = [("rabbit", "hopped"), ("fox", "trotted"), ("bear", "lumbered"), ("mouse", "scurried"),
           ("duck", "waddled"), ("cat", "padded"), ("dog", "ran"), ("owl", "flew"),
           ("frog", "hopped"), ("squirrel", "scampered"), ("turtle", "crawled"), ("pig", "trotted"),
           ("lamb", "skipped"), ("hedgehog", "shuffled"), ("puppy", "bounced"), ("kitten", "tiptoed"),
           ("goat", "climbed"), ("horse", "galloped"), ("bird", "fluttered"), ("deer", "leaped"),
           ("badger", "waddled"), ("otter", "swam"), ("cow", "walked"), ("hen", "strutted")]
ANIMAL_NAMES = ["Pip", "Benny", "Rosie", "Toto", "Coco", "Bella", "Rusty", "Sunny", "Muffin",
                "Pebble", "Dot", "Button", "Nutmeg", "Biscuit", "Maple", "Clover", "Fluffy",
                "Shadow", "Ziggy", "Willow", "Acorn", "Honey", "Pepper", "Patch"]
ADJ_CHAR = ["little", "small", "brave", "kind", "curious", "shy", "happy", "clever", "young",
            "friendly", "gentle", "cheerful", "silly", "quiet", "busy", "sleepy"]
PLACES = [("a small village", "near the hills"), ("a big forest", "full of tall trees"),
          ("a little house", "by the sea"), ("a farm", "with a red barn"),
          ("a quiet town", "beside a river"), ("a green meadow", "under the blue sky"),
          ("a cozy cottage", "at the edge of the woods"), ("a busy city", "with many tall buildings"),
          ("a tiny island", "in the middle of a lake"), ("a snowy mountain", "far to the north"),
          ("a sunny garden", "behind an old wall"), ("a tall tree house", "in the park")]
OBJECTS = ["ball", "kite", "hat", "book", "toy boat", "blue cup", "red ball", "teddy bear",
           "shiny stone", "little key", "drum", "scarf", "basket", "box of crayons", "bell",
           "wooden horse", "map", "lantern", "jar of honey", "flower pot", "necklace", "whistle"]
FOODS = ["apples", "cake", "cookies", "bread and jam", "carrots", "berries", "soup", "pie",
         "pancakes", "cheese", "nuts", "honey", "sandwiches", "plums", "corn", "milk"]
WEATHER = ["The sun was shining.", "It was a warm summer day.", "The wind was blowing softly.",
           "It was a cold winter morning.", "Rain was falling on the roof.", "The sky was bright and clear.",
           "Snow covered the ground.", "It was a lovely spring day.", "The leaves were turning gold.",
           "Clouds moved slowly across the sky."]
FEEL_BAD = ["sad", "worried", "upset", "scared", "lonely", "unhappy", "afraid", "cross"]
FEEL_GOOD = ["happy", "glad", "proud", "excited", "thankful", "joyful", "pleased", "calm"]
PLAY = ["played with a ball", "ran in the grass", "built a tower of blocks", "drew pictures",
        "sang songs", "jumped in the puddles", "looked for bugs", "played hide and seek",
        "rode a bike", "flew a kite", "picked flowers", "read a book", "splashed in the water",
        "made a sand castle", "climbed a little hill", "danced in the sun"]
PROBLEMS = ["lost", "broke", "could not find", "dropped", "forgot"]
HELPERS = ["mom", "dad", "grandma", "grandpa", "big sister", "big brother", "teacher", "friend",
           "aunt", "uncle", "neighbor"]
LESSONS = ["that it is good to share", "that friends help each other",
           "that being kind makes everyone happy", "to always tell the truth",
           "that it is okay to ask for help", "to be careful and patient",
           "that trying again is brave", "that sharing makes things more fun",
           "to say sorry when you make a mistake", "that small things can matter a lot",
           "that being different is good", "to listen to others"]
TIME_OPEN = ["Once upon a time,", "One day,", "Long ago,", "One morning,", "One sunny day,",
             "Once upon a time, in a land far away,", "One evening,", "Many years ago,"]
ENDINGS = ["The end.", "And they all lived happily ever after.", "From that day on, they were the best of friends.",
           "And that is how the day ended, with big smiles.", "Then they went home for dinner.",
           "That night, {n} slept with a smile.", "It was the best day ever."]


def pick(r, xs):
    return xs[r.randrange(len(xs))]


def character(r):
    k = r.random()
    if k < 0.5:
        gender = "girl" if r.random() < 0.5 else "boy"
        name = pick(r, NAMES_GIRL if gender == "girl" else NAMES_BOY)
        he, him, his = ("she", "her", "her") if gender == "girl" else ("he", "him", "his")
        return dict(name=name, kind=gender, he=he, him=him, his=his, move="walked",
                    desc="a %s %s named %s" % (pick(r, ADJ_CHAR), gender, name))
    animal, move = pick(r, ANIMALS)
    name = pick(r, ANIMAL_NAMES)
    he, him, his = (("she", "her", "her") if r.random() < 0.5 else ("he", "him", "his"))
    return dict(name=name, kind=animal, he=he, him=him, his=his, move=move,
                desc="a %s %s named %s" % (pick(r, ADJ_CHAR), animal, name))


def cap(s):
    return s[0].upper() + s[1:]


def story_lost(r, a, b):
    obj = pick(r, OBJECTS)
    place = pick(r, ["park", "garden", "woods", "yard", "field", "beach", "market", "barn"])
    s = []
    s.append("%s had a %s. %s loved the %s very much." % (a["name"], obj, cap(a["he"]), obj))
    s.append("Every day, %s took it everywhere %s went." % (a["he"], a["he"]))
    s.append("One day, %s went to the %s and %s there." % (a["name"], place, pick(r, PLAY)))
    s.append("When it was time to go home, %s %s %s %s." % (a["name"], pick(r, ["could not find", "had lost"]), a["his"], obj))
    s.append("%s felt very %s." % (a["name"], pick(r, FEEL_BAD)))
    s.append('"Where is my %s?" %s asked.' % (obj, a["he"]))
    s.append("Just then, %s came by. %s saw that %s was %s." % (b["name"], cap(b["he"]), a["name"], pick(r, FEEL_BAD)))
    s.append('"What is wrong?" asked %s.' % b["name"])
    s.append('"I lost my %s," said %s.' % (obj, a["name"]))
    s.append('"Don\'t worry, I will help you look," said %s.' % b["name"])
    spots = r.sample(["under a bush", "behind a tree", "near the pond", "in the tall grass",
                      "under a bench", "next to a big rock", "inside an old box", "by the gate"], 3)
    s.append("They looked %s. They looked %s." % (spots[0], spots[1]))
    s.append("At last, %s found the %s %s!" % (pick(r, [a["name"], b["name"]]), obj, spots[2]))
    s.append("%s was so %s. \"Thank you, %s!\" %s said." % (a["name"], pick(r, FEEL_GOOD), b["name"], a["he"]))
    s.append("%s learned %s." % (a["name"], pick(r, LESSONS)))
    return s


def story_share(r, a, b):
    food = pick(r, FOODS)
    s = []
    s.append("%s had a basket of %s. %s wanted to eat all of them." % (a["name"], food, cap(a["he"])))
    s.append("%s %s over and looked at the basket." % (b["name"], b["move"]))
    s.append('"Those %s look good," said %s. "Can I have some?"' % (food, b["name"]))
    s.append('"No," said %s. "They are all mine."' % a["name"])
    s.append("%s felt %s and went away." % (b["name"], pick(r, FEEL_BAD)))
    s.append("%s ate and ate, but soon %s felt %s." % (a["name"], a["he"], pick(r, ["lonely", "sick", "bored", "sad"])))
    s.append("Eating alone was not fun at all.")
    s.append("So %s went to find %s." % (a["name"], b["name"]))
    s.append('"I am sorry," said %s. "Would you like to share my %s?"' % (a["name"], food))
    s.append('"Yes, please!" said %s with a big smile.' % b["name"])
    s.append("They sat together %s and ate the %s." % (pick(r, ["under a tree", "by the river", "on the grass", "at the table"]), food))
    s.append("The %s tasted even better when they shared." % food)
    s.append("%s learned %s." % (a["name"], pick(r, ["that it is good to share", "that sharing makes things more fun"])))
    return s


def story_fear(r, a, b):
    thing = pick(r, ["the dark", "the big dog next door", "the tall slide", "thunder", "deep water",
                     "the old bridge", "the first day of school", "the noisy wind"])
    s = []
    s.append("%s was afraid of %s." % (a["name"], thing))
    s.append("Every time %s thought about it, %s felt %s." % (a["he"], a["his"] + " tummy", "funny"))
    s.append("One day, %s %s told %s about it." % (a["his"], pick(r, HELPERS), a["him"]) if r.random() < 0.0 else
             "One day, %s told %s %s about it." % (a["name"], a["his"], pick(r, HELPERS)))
    s.append('"It is okay to be scared," came the answer. "Being brave means you try anyway."')
    s.append("%s thought about this for a long time." % a["name"])
    s.append("The next day, %s took a deep breath." % a["name"])
    s.append("%s held %s hand, and together they faced %s." % (b["name"], a["his"], thing))
    s.append("It was not as bad as %s thought!" % a["he"])
    s.append("Soon %s was laughing and %s." % (a["name"], pick(r, ["clapping", "smiling", "jumping", "singing"])))
    s.append('"I did it!" %s shouted. %s felt so %s.' % (a["name"], cap(a["he"]), pick(r, ["proud", "brave", "happy"])))
    return s


def story_adventure(r, a, b):
    goal = pick(r, ["the top of the hill", "the other side of the river", "the old castle",
                    "the biggest tree in the forest", "a secret cave", "the rainbow's end", "the lighthouse"])
    s = []
    s.append("%s and %s wanted to go to %s." % (a["name"], b["name"], goal))
    s.append("They packed some %s and a %s." % (pick(r, FOODS), pick(r, OBJECTS)))
    s.append("They %s past the %s and over the %s." % (pick(r, ["walked", "went", "traveled"]),
                                                   pick(r, ["farm", "pond", "school", "mill", "fence"]),
                                                   pick(r, ["bridge", "stream", "hill", "rocks", "field"])))
    s.append(pick(r, WEATHER))
    s.append("On the way, they met %s." % pick(r, ["an old owl", "a friendly frog", "a tired snail",
                                                  "a singing bird", "a lost puppy", "a wise turtle", "a busy bee"]))
    s.append('"Where are you going?" it asked.')
    s.append('"We are going to %s," said %s.' % (goal, a["name"]))
    s.append('"Be careful," it said. "The path is long, but you can do it if you help each other."')
    s.append("The path was %s. %s was tired, so %s helped %s." % (pick(r, ["steep", "muddy", "rocky", "long"]),
                                                                   b["name"], a["name"], b["him"]))
    s.append("At last they reached %s." % goal)
    s.append("They saw %s." % pick(r, ["the whole valley below", "a field of flowers", "the sparkling sea",
                                      "a nest of baby birds", "the town far away", "the sun going down"]))
    s.append('"It was worth it," said %s.' % b["name"])
    s.append("They sat down together and %s." % pick(r, ["ate their snack", "watched the sky", "laughed and talked",
                                                         "sang a song"]))
    return s


def story_help(r, a, b):
    s = []
    job = pick(r, ["fix the fence", "plant the seeds", "paint the barn", "clean the pond",
                   "build a nest", "carry the apples", "find the lost sheep", "bake bread for the party"])
    s.append("%s needed to %s, but it was too hard to do alone." % (b["name"], job))
    s.append("%s sat down and sighed." % cap(b["he"]))
    s.append("%s saw %s and asked, \"Can I help you?\"" % (a["name"], b["name"]))
    s.append('"Yes, please," said %s. "I need to %s."' % (b["name"], job))
    s.append("So they worked together all %s." % pick(r, ["morning", "afternoon", "day"]))
    s.append("%s did one part, and %s did the other part." % (a["name"], b["name"]))
    s.append("Soon the work was done.")
    s.append('"Thank you," said %s. "You are a good friend."' % b["name"])
    s.append("%s felt warm and %s inside." % (a["name"], pick(r, FEEL_GOOD)))
    s.append("The next week, when %s needed help, %s came right away." % (a["name"], b["name"]))
    return s


def story_mistake(r, a, b):
    obj = pick(r, OBJECTS)
    s = []
    s.append("%s was playing with %s %s in the house." % (a["name"], b["name"] + "'s", obj))
    s.append("%s threw it up high, and it fell and broke." % cap(a["he"]))
    s.append("%s felt %s. %s did not want to tell anyone." % (a["name"], pick(r, ["scared", "worried", "bad"]), cap(a["he"])))
    s.append("%s hid the pieces %s." % (cap(a["he"]), pick(r, ["under the bed", "in a drawer", "behind the door"])))
    s.append("Later, %s looked for %s %s. \"Has anyone seen my %s?\" %s asked." % (b["name"], b["his"], obj, obj, b["he"]))
    s.append("%s felt worse and worse." % a["name"])
    s.append('At last %s said, "I am sorry. I broke your %s."' % (a["name"], obj))
    s.append("%s was quiet for a moment. Then %s said, \"Thank you for telling me the truth.\"" % (b["name"], b["he"]))
    s.append("Together they %s." % pick(r, ["fixed it with glue", "made a new one", "found a way to mend it"]))
    s.append("%s learned %s." % (a["name"], pick(r, ["to always tell the truth", "to say sorry when you make a mistake"])))
    return s


KINDS = [story_lost, story_share, story_fear, story_adventure, story_help, story_mistake]


def story(r):
    a = character(r)
    b = character(r)
    while b["name"] == a["name"]:
        b = character(r)
    place, extra = pick(r, PLACES)
    s = ["%s there was %s. %s lived in %s %s." % (pick(r, TIME_OPEN), a["desc"], cap(a["he"]), place, extra)]
    if r.random() < 0.7:
        s.append("%s had a friend, %s." % (a["name"], b["desc"]))
    if r.random() < 0.5:
        s.append(pick(r, WEATHER))
    if r.random() < 0.5:
        s.append("%s liked to %s." % (a["name"], pick(r, PLAY).replace("played", "play").replace("ran", "run")
                                      .replace("built", "build").replace("drew", "draw").replace("sang", "sing")
                                      .replace("jumped", "jump").replace("looked", "look").replace("rode", "ride")
                                      .replace("flew", "fly").replace("picked", "pick").replace("read", "read")
                                      .replace("splashed", "splash").replace("made", "make").replace("climbed", "climb")
                                      .replace("danced", "dance")))
    s += pick(r, KINDS)(r, a, b)
    s.append(pick(r, ENDINGS).format(n=a["name"]))
    # split into 1-3 paragraphs
    text = []
    cut = sorted(r.sample(range(2, max(3, len(s) - 1)), min(2, max(0, len(s) - 4))))
    para, last = [], 0
    for c in cut + [len(s)]:
        text.append(" ".join(s[last:c]))
        last = c
    return "\n".join(t for t in text if t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bytes", type=int, default=4000000)
    ap.add_argument("--formfeed", action="store_true", help='separate stories by "\\n\\f\\n" (encode_corpus.js input)')
    a = ap.parse_args()
    r = random.Random(a.seed)
    n = 0
    out = sys.stdout
    while n < a.bytes:
        st = story(r) + ("\n\f\n" if a.formfeed else "\n\n")
        out.write(st)
        n += len(st.encode("utf-8"))


if __name__ == "__main__":
    main()
