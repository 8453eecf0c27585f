"""Build the bundled sample datasets in src/llmft/data/samples/ (run once; the output is committed).

    python scripts/build_samples.py

It writes five JSON-lines files (UTF-8, one JSON object per line):

- alpaca_sample.jsonl: instruction / input / output records. Arithmetic, unit conversions, sorting,
  counting, dates and number facts are computed; plurals, antonyms, capitals and lists come from tables;
  the explanations are hand-written.
- grammar_sample.jsonl: input / target pairs. Targets are hand-written correct sentences; inputs are the
  same sentences with one or two errors put in by rules (about 10% are left correct, as in real data).
- grammar_jfleg_sample.jsonl: sentence / corrections, JFLEG style (2 to 4 acceptable corrections each).
- chat_sample.jsonl: messages conversations (optional system prompt, 1 to 3 user/assistant turns).
- classification_sample.jsonl: text / label review sentiment (positive, negative, neutral), balanced.

Generation is deterministic (random.Random(0), standard library only, no network): running the script
twice gives byte-identical files. The committed files, not this script, define the samples.
"""

from __future__ import annotations

import datetime
import itertools
import json
import random
import re
from collections.abc import Collection
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src/llmft/data/samples"


def table(text: str) -> list[tuple[str, str]]:
    """'a=b; c=d' -> [('a', 'b'), ('c', 'd')]."""
    return [tuple(item.strip().split("=")) for item in text.split(";")]


def words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",")]


CAPITALS = table(
    "France=Paris; Germany=Berlin; Italy=Rome; Spain=Madrid; Portugal=Lisbon; Japan=Tokyo; China=Beijing;"
    "India=New Delhi; Canada=Ottawa; Australia=Canberra; Brazil=Brasilia; Argentina=Buenos Aires;"
    "Mexico=Mexico City; Egypt=Cairo; Kenya=Nairobi; Nigeria=Abuja; Russia=Moscow; Turkey=Ankara;"
    "Greece=Athens; Sweden=Stockholm; Norway=Oslo; Finland=Helsinki; Denmark=Copenhagen; Poland=Warsaw;"
    "Ireland=Dublin; the Netherlands=Amsterdam; Belgium=Brussels; Austria=Vienna; Hungary=Budapest;"
    "Peru=Lima; Chile=Santiago; Colombia=Bogota; Thailand=Bangkok; Vietnam=Hanoi; South Korea=Seoul;"
    "the Philippines=Manila; New Zealand=Wellington; Morocco=Rabat; Ethiopia=Addis Ababa; Ghana=Accra;"
    "Iran=Tehran; Saudi Arabia=Riyadh; Pakistan=Islamabad; Cuba=Havana; Iceland=Reykjavik; Ukraine=Kyiv;"
    "Romania=Bucharest; Nepal=Kathmandu; the United Kingdom=London"
)
PLURALS = table(
    "child=children; mouse=mice; goose=geese; tooth=teeth; foot=feet; woman=women; person=people;"
    "knife=knives; leaf=leaves; wolf=wolves; city=cities; baby=babies; box=boxes; bus=buses; potato=potatoes;"
    "hero=heroes; sheep=sheep; deer=deer; ox=oxen; crisis=crises; phenomenon=phenomena; church=churches;"
    "dish=dishes; key=keys; wife=wives; shelf=shelves; half=halves; photo=photos; piano=pianos; day=days"
)
ANTONYMS = table(
    "hot=cold; happy=sad; tall=short; fast=slow; early=late; strong=weak; rich=poor; empty=full;"
    "easy=difficult; ancient=modern; cheap=expensive; wet=dry; loud=quiet; accept=reject; increase=decrease;"
    "generous=stingy; smooth=rough; deep=shallow; remember=forget; true=false; push=pull; win=lose;"
    "buy=sell; above=below; inside=outside; visible=invisible; thick=thin; victory=defeat; arrive=depart"
)
CATEGORIES = {
    "fruits": words("apple, banana, orange, pear, mango, cherry, grape, peach, plum, kiwi, pineapple, lemon"),
    "vegetables": words("carrot, potato, onion, broccoli, spinach, cucumber, cabbage, lettuce, celery, leek"),
    "colors": words("red, blue, green, yellow, purple, orange, pink, brown, black, white, gray"),
    "mammals": words("dog, cat, horse, whale, elephant, bat, dolphin, lion, rabbit, cow, bear, tiger"),
    "birds": words("eagle, sparrow, owl, robin, parrot, penguin, pigeon, crow, swan, flamingo"),
    "musical instruments": words("piano, violin, guitar, flute, trumpet, drums, cello, clarinet, harp"),
    "planets in our solar system": words("Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus, Neptune"),
    "continents": words("Africa, Antarctica, Asia, Australia, Europe, North America, South America"),
    "sports": words("soccer, tennis, basketball, swimming, cycling, volleyball, baseball, rugby, golf"),
    "programming languages": words("Python, Java, C, JavaScript, Rust, Go, Ruby, Kotlin, Swift"),
    "kitchen utensils": words("spatula, whisk, ladle, peeler, grater, rolling pin, colander, tongs"),
    "oceans": words("Pacific Ocean, Atlantic Ocean, Indian Ocean, Southern Ocean, Arctic Ocean"),
}
SIMPLE_CATEGORIES = ["fruits", "vegetables", "colors", "mammals", "birds"]  # one lowercase word per item
REVERSE_WORDS = words(
    "planet, garden, window, python, rocket, silver, basket, pencil, dragon, jungle, camera, summer, bottle,"
    "forest, castle, yellow, stressed, drawer, animal, lemon, kitten, music, orbit, tunnel, marble, puzzle"
)
NUMBER_WORDS = {3: "three", 4: "four", 5: "five"}
MONTHS = words(
    "January, February, March, April, May, June, July, August, September, October, November, December"
)
WEEKDAYS = words("Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday")  # not strftime: no locale

# Hand-written explanations: (instruction, answer). Those asked as "What is ..." start with a definition.
EXPLANATIONS = [
    ("What is photosynthesis?", "Photosynthesis is the process plants use to make their own food. Using energy from sunlight, they combine carbon dioxide from the air with water from the soil to make glucose, a sugar, and release oxygen as a by-product. It happens mainly in the leaves, inside chloroplasts that contain the green pigment chlorophyll."),
    ("Why is the sky blue?", "The sky looks blue because air scatters sunlight. Sunlight contains all colors, but the short blue wavelengths are scattered much more strongly by the gas molecules in the atmosphere than the long red ones. This scattered blue light reaches our eyes from every direction, so the whole sky looks blue. At sunrise and sunset the light passes through more air, more of the blue is scattered away, and the sky turns orange and red."),
    ("How do I boil an egg?", "Place the egg in a saucepan and cover it with cold water. Bring the water to a boil, then lower the heat to a gentle simmer. Cook for about 6 minutes for a soft yolk or 10 to 12 minutes for a hard-boiled egg. Move the egg into cold water to stop the cooking, and peel it once it has cooled."),
    ("What is a prime number?", "A prime number is a whole number greater than 1 whose only divisors are 1 and itself. For example, 2, 3, 5, 7 and 11 are prime. The number 12 is not prime, because it can be divided evenly by 2, 3, 4 and 6. The number 2 is the only even prime."),
    ("Give some tips for sleeping well.", "Go to bed and wake up at the same time every day, even on weekends. Keep your bedroom cool, dark and quiet. Avoid caffeine in the afternoon and heavy meals late in the evening. Put screens away about an hour before bed and try a calming routine, such as reading or gentle stretching."),
    ("What is gravity?", "Gravity is the force that pulls objects with mass toward each other. On Earth it pulls everything toward the center of the planet, which is why dropped objects fall and why we have weight. The more massive an object is, the stronger its pull, and the force gets weaker with distance. Gravity also keeps the Moon in orbit around Earth and the planets in orbit around the Sun."),
    ("Explain how a rainbow forms.", "A rainbow forms when sunlight shines through raindrops. Each drop bends the light as it enters, reflects it off the back of the drop, and bends it again as it leaves. Because each color bends by a slightly different amount, white light spreads out into red, orange, yellow, green, blue, indigo and violet. You see a rainbow when the sun is behind you and the rain is in front of you."),
    ("What is a noun?", "A noun is a word that names a person, place, thing or idea. Examples include teacher, city, chair and happiness. Nouns can be the subject or the object of a sentence. Proper nouns, such as London or Maria, name specific things and begin with a capital letter."),
    ("What is a verb?", "A verb is a word that describes an action, a state or an occurrence. Words such as run, think, become and is are verbs. Every complete sentence contains at least one verb, and verbs change form to show tense, as in walk, walked and will walk."),
    ("What is DNA?", "DNA, short for deoxyribonucleic acid, is the molecule that carries the genetic instructions of living things. It is shaped like a twisted ladder called a double helix. The order of its four bases, adenine, thymine, guanine and cytosine, spells out the instructions for building proteins. DNA is copied and passed from parents to their offspring."),
    ("Why do leaves change color in autumn?", "Leaves are green because they contain chlorophyll, the pigment plants use for photosynthesis. In autumn, shorter days and cooler temperatures make many trees stop producing chlorophyll. As the green fades, yellow and orange pigments that were there all along become visible. Some trees also make red and purple pigments in the fall."),
    ("How do I make a cup of tea?", "Boil fresh water. Put a tea bag or a teaspoon of loose tea in a cup or teapot and pour the hot water over it. Let it steep for three to five minutes for black tea, or two to three minutes for green tea, which prefers water just below boiling. Remove the tea and add milk, lemon or sugar if you like."),
    ("What is inflation?", "Inflation is the general rise in prices over time, which means the same amount of money buys less than before. It is usually measured as the yearly percentage change in the price of a typical basket of goods and services. Moderate inflation is normal in a growing economy, but high inflation erodes savings. Central banks often raise interest rates to slow it down."),
    ("What causes the seasons?", "The seasons are caused by the tilt of Earth's axis, which is about 23.5 degrees. As Earth orbits the Sun, first one hemisphere and then the other leans toward the Sun. The hemisphere tilted toward the Sun gets more direct sunlight and longer days, so it has summer while the other has winter. The seasons are not caused by changes in Earth's distance from the Sun."),
    ("What is an atom?", "An atom is the smallest unit of a chemical element that still has the properties of that element. It has a tiny, dense nucleus of protons and neutrons, surrounded by electrons. The number of protons decides which element it is; every carbon atom, for example, has six protons. Atoms join together to form molecules."),
    ("How does a refrigerator keep food cold?", "A refrigerator moves heat from inside the cabinet to the room outside. A fluid called a refrigerant evaporates in coils inside the fridge and absorbs heat as it turns into a gas. A compressor squeezes the gas, and it gives off that heat through coils on the back or bottom of the fridge as it turns back into a liquid. The cycle repeats to keep the inside cold."),
    ("How is weather different from climate?", "Weather is the state of the atmosphere at a particular place and time, such as a rainy afternoon or a hot, windy day. Climate is the average pattern of weather in a region over a long period, usually 30 years or more. In short, weather tells you what to wear today, while climate tells you what kind of clothes to own."),
    ("What is a fraction?", "A fraction is a number that represents a part of a whole. It is written as two numbers separated by a line: the top number, the numerator, tells how many parts you have, and the bottom number, the denominator, tells how many equal parts make up the whole. For example, 3/4 means three out of four equal parts."),
    ("Why is drinking water important?", "Water makes up more than half of the human body and is needed for almost every bodily function. It helps control body temperature, carries nutrients to cells, cushions joints and removes waste. Even mild dehydration can cause headaches, tiredness and poor concentration. Drinking regularly through the day, and more in hot weather or during exercise, keeps you hydrated."),
    ("What is a volcano?", "A volcano is an opening in Earth's crust through which molten rock, ash and gases escape from below the surface. Molten rock underground is called magma; once it reaches the surface it is called lava. Many volcanoes form where tectonic plates meet. Over time, eruptions can build mountains, and volcanic ash can make soil very fertile."),
    ("Why is recycling important?", "Recycling turns used materials such as paper, glass, metal and some plastics into new products. It reduces the amount of waste sent to landfills and incinerators. It also saves raw materials and often uses less energy than making products from scratch. To recycle well, rinse containers and follow your local rules about what can be collected."),
    ("Give some tips for writing a good email.", "Write a clear subject line that says what the email is about. Start with a short greeting, then put the main point or request in the first few sentences. Keep paragraphs short and use a polite, professional tone. Before sending, check the spelling, the recipient and any attachments."),
    ("What is machine learning?", "Machine learning is a branch of artificial intelligence in which computers learn patterns from data instead of following only hand-written rules. A model is trained on many examples, such as labeled photos, and adjusts its internal parameters to make better predictions. Once trained, it can make predictions about new data. Spam filters and recommendation systems are common examples."),
    ("What is a black hole?", "A black hole is a region of space where gravity is so strong that nothing, not even light, can escape. Many form when a very massive star collapses at the end of its life. The boundary beyond which escape is impossible is called the event horizon. Black holes cannot be seen directly, but astronomers detect them by their effects on nearby stars and gas."),
    ("How do bees make honey?", "Worker bees collect nectar from flowers and carry it back to the hive in a special honey stomach. There they pass it to other bees, and enzymes break its sugars down into simpler ones. The bees store it in wax cells and fan it with their wings so that water evaporates and it thickens into honey. Finally, they seal each cell with a wax cap."),
    ("What is the internet?", "The internet is a global network of computers and other devices that exchange data using shared rules called protocols. It connects homes, businesses, universities and data centers through cables, fiber-optic lines and wireless links. Services such as the web, email and video calls all run on top of it."),
    ("Give some tips for saving money.", "Make a simple budget so you know where your money goes each month. Set up an automatic transfer into a savings account on payday. Cook at home more often, cancel subscriptions you rarely use, and wait a day before making large purchases. Small amounts saved regularly add up over time."),
    ("Why is regular exercise good for you?", "Regular exercise strengthens the heart and lungs and helps control blood pressure and weight. It builds muscle and bone strength, which supports balance and mobility with age. Exercise also improves mood, reduces stress and can help you sleep better. Most adults benefit from at least 150 minutes of moderate activity a week."),
    ("What is an ecosystem?", "An ecosystem is a community of living things, such as plants, animals and microorganisms, together with the non-living environment they share, such as water, soil and air. Its members depend on one another for food, shelter and other resources. A pond, a forest and a coral reef are all examples of ecosystems."),
    ("What does a computer's CPU do?", "The CPU, or central processing unit, is the part of a computer that carries out the instructions of programs. It performs arithmetic, makes comparisons and moves data between memory and other components. Modern CPUs have several cores, so they can work on more than one task at the same time."),
    ("How do I plant a seed?", "Fill a small pot with moist potting soil. Press the seed in to the depth shown on the packet, usually two or three times the width of the seed, and cover it lightly. Keep the soil damp but not soggy, and put the pot somewhere warm and bright. Once the seedling has a few true leaves, move it to a larger pot or the garden."),
]  # fmt: skip
# Long texts: (instruction, text, one-sentence summary); each becomes an explanation and a summary task.
LONG_TEXTS = [
    ("Explain how vaccines work.", "Vaccines train the immune system to recognize a germ before it can cause serious illness. A vaccine contains a harmless piece or version of a virus or bacterium, such as a weakened or inactivated form, a single protein from its surface, or instructions that let the body's cells make that protein for a short time. The immune system reacts as if it had met the real germ: it produces antibodies that attach to the germ and memory cells that remember what it looks like. Later, if the person meets the real germ, the memory cells recognize it quickly and the body fights it off before it spreads. When enough people are vaccinated, the germ has fewer chances to spread, which also protects people who cannot be vaccinated.", "Vaccines expose the immune system to a harmless form or part of a germ, so that it builds antibodies and memory cells and can quickly fight off the real germ later."),
    ("How should I prepare for a job interview?", "Start by researching the company: read its website, learn what it does, and look for recent news. Next, study the job description and match each requirement with an example from your own experience. Practice answering common questions out loud, such as why you want the job, what your strengths are and how you handled a difficult situation, using short stories that describe the situation, what you did and the result. Prepare two or three questions to ask about the team or the role. The day before, choose appropriate clothes, print your resume, and plan your route so that you arrive about ten minutes early. During the interview, listen carefully and be honest about what you do not know. Afterward, send a short thank-you note.", "To prepare for a job interview, research the company, link your experience to the job, practice answers and questions, plan the day, and follow up with a thank-you note."),
    ("Describe the water cycle.", "The water cycle is the continuous movement of water between the land, the oceans and the atmosphere, powered by energy from the Sun. Sunlight warms oceans, lakes and rivers, and some of their water evaporates into the air as invisible water vapor; plants also release vapor from their leaves, a process called transpiration. As the moist air rises, it cools, and the vapor condenses into tiny droplets or ice crystals that form clouds. When the droplets grow heavy enough, they fall as precipitation, such as rain, snow, sleet or hail. Some of this water flows over the ground into streams and rivers and back to the sea, and some soaks into the soil and becomes groundwater. In time the water evaporates again, and the cycle repeats.", "In the water cycle, the Sun's heat evaporates water, the vapor condenses into clouds and falls as precipitation, and the water flows back to rivers, oceans and groundwater before evaporating again."),
    ("I want to start running. How should a beginner begin?", "Begin with a pair of comfortable running shoes that fit well. For the first few weeks, alternate running and walking: for example, run for one minute and walk for two, eight to ten times. Go out three times a week with a rest day between sessions, so that your muscles, joints and tendons can adapt. Run at an easy pace at which you could still hold a conversation. Each week, make the running intervals a little longer and the walking breaks a little shorter. Warm up with five minutes of brisk walking before each run and cool down with gentle walking afterward. Drink water, listen to your body, and rest if you feel sharp pain rather than normal tiredness. After eight to ten weeks, many beginners can run for thirty minutes without stopping.", "A beginner should get good shoes, run and walk in intervals three times a week at an easy pace, lengthen the running gradually, and rest when needed."),
]  # fmt: skip

# Correct sentences with marked spots where a rule can put an error: {kind:correct} or {kind:correct>wrong}.
# Kinds: sv (subject-verb agreement), past (irregular past), art (a/an/the), pl (plural), its, there
# (their/there/they're), cmp (double comparative), prep (preposition; wrong form always given), pro
# (pronoun case). A sentence-initial lowercase letter is a further error ("cap").
GRAMMAR = """
My sister {sv:plays} the piano in {art:an} orchestra.
Yesterday we {past:went} to the beach and {past:swam} in the sea.
She {past:bought} {art:an} umbrella because it was raining.
The dog wagged {its:its} tail when it {past:saw} the children.
The students {past:left} {there:their} books on the table.
This phone is {cmp:better} than the one my brother {sv:has}.
We will meet {prep:on>in} Monday morning in {art:the} library.
{pro:Tom and I} cleaned the garage and {past:threw} away the old boxes.
There are three {pl:children} playing in the park near {there:their} school.
He {sv:doesn't} like coffee, but he {sv:drinks} tea every day.
Last night I {past:ate} too much pizza and {past:slept} badly.
My parents {sv:live} in a small village near {art:the} coast.
{its:It's} going to rain later, so take {art:a} coat.
The teacher {past:taught} us how to solve {art:the} equation.
Maria is interested {prep:in>on} learning Japanese, and she {sv:practices} every day.
I {past:saw} {art:an} elephant at the zoo last summer.
{there:There} are two {pl:cups} on the kitchen table.
Our new apartment is {cmp:bigger} than the old one, and it {sv:has} a balcony.
The {pl:mice} {past:ran} under the kitchen door.
She {past:wrote} {art:a} long letter to her grandmother.
My friends and I {sv:are} planning a trip to Spain {prep:in>on} July.
The company announced {its:its} results {prep:on>in} Tuesday.
He is afraid {prep:of>from} spiders, so he never {sv:goes} into the basement.
We {past:bought} two new {pl:chairs} for the kitchen.
Please leave your shoes over {there:there} by {art:the} door.
{pro:She and I} {sv:are} in the same class.
The cat {sv:sleeps} on {art:the} sofa most afternoons.
Running every morning makes me feel {cmp:healthier} and {cmp:happier}.
I have lived in this city {prep:for>since} ten {pl:years}.
The {pl:women} in the choir {past:sang} beautifully.
He {past:caught} the last train home because he {past:left} work late.
She gave {art:an} honest answer to every {pl:question>questions}.
They {sv:have} finished {there:their} homework already.
My grandfather {past:told} us {art:a} funny story about his childhood.
The weather today is {cmp:worse} than it {sv:was} yesterday.
We arrived {prep:at>to} {art:the} airport two hours early.
Anna {sv:watches} the news every night before {pro:she} goes to bed.
I need {art:a} new pair of shoes because my old ones {sv:are} worn out.
The children {past:drew} pictures of {there:their} pets.
Between you and {pro:me}, the movie was {cmp:longer} than it needed to be.
The {pl:leaves} on the trees {sv:turn} yellow in October.
She {sv:has} two cats and {art:a} dog.
We {past:drove} to the mountains and {past:slept} in {art:a} tent.
He is very good {prep:at>in} mathematics, but he {sv:finds} history boring.
My cousin {sv:studies} biology at {art:a>an} university in Canada.
Yesterday the wind {past:blew} the fence down, and {its:its} posts are broken.
{its:It's} important to drink enough water when the weather {sv:is} hot.
I {past:left} my keys at the office and {past:had} to go back.
The train {sv:leaves} at seven o'clock every morning.
They {past:built} a new bridge across {art:the} river last year.
She {past:bought} three {pl:loaves} of bread at the bakery.
We {sv:go} swimming {prep:in>on} the summer.
{pro:He} and his wife {sv:own} a small bakery.
The baby {sv:cries} when she {sv:is} hungry.
I have never {past:seen>saw} such {art:a} beautiful sunset.
Tom {past:brought} {art:a>an} chocolate cake to the party.
This is the {cmp:easiest} exercise in {art:the} book.
The meeting {sv:starts} {prep:at>on} nine o'clock.
Our neighbors {sv:have} painted {there:their} fence white.
She {past:ran} five {pl:kilometers} this morning.
My {pl:feet} hurt after {art:the} long walk.
Mom {past:made} pancakes for {pro:my brother and me} this morning.
He {past:threw} the ball over the fence, and {pro:we} could not find it.
This road is {cmp:safer} than the highway, but it {sv:takes} longer.
I am looking forward {prep:to>for} {art:the} holidays.
Each of the {pl:students} {sv:has} a laptop.
She {sv:is} the {cmp:tallest} girl in her class.
The {pl:geese} {past:flew} south for the winter.
We {sv:were} tired after {art:the} long journey.
Someone {past:left} {art:an} orange on my desk.
The phone {past:fell} on the floor and {its:its} screen cracked.
They {past:sold} {there:their} old car last month.
My bag is {cmp:heavier} than yours because it {sv:contains} three {pl:books}.
She is married {prep:to>with} a doctor who {sv:works} at {art:a>} hospital.
The {pl:knives} in this drawer {sv:are} very sharp.
{pro:They} invited us to dinner at {there:their} house.
The little boy {past:fell} off his bike, but he {sv:was} not hurt.
This soup tastes {cmp:better} with {art:a>an} little salt.
Our team {past:won} the match in {art:the} last minute.
He {past:spent} all of his money on {pl:books}.
{there:They're} going to visit {pro:us} next week.
It {past:took} me {art:an} hour to finish the report.
We {past:took} a lot of {pl:photos} during the trip.
The {pl:teeth} of a shark {sv:are} very sharp.
My father {past:made} breakfast for {pro:us} on Sunday.
The doctor told {pro:him} to rest for {art:a} week.
Paris {sv:is} one of the most beautiful {pl:cities>city} in the world.
The kids {sv:love} chocolate ice cream more than {pro:we} do.
{there:There} is {art:a} bakery on the corner of our street.
She {past:felt} much {cmp:better} after a good night's sleep.
He {sv:goes} jogging {prep:in>at} the morning before {art:the} sun rises.
The old man {sv:walks} his dog twice {art:a} day.
{pro:He and I>Me and him} {past:went} to the same school.
"""
# JFLEG style: every marked error is a mistake in the input; [x|y] lists acceptable wordings (x in the input).
JFLEG = """
Yesterday[,|] I {past:went} to the market and {past:bought} some [fresh|ripe] vegetables.
My brother {sv:doesn't} like to [wake up|get up] early, so he {sv:is} often late.
{its:It's} [very hard|difficult|hard] to find {art:a>} cheap apartment in this city.
The {pl:children} [were playing|played] in the garden until {art:the} sun went down.
In my opinion[,|] {there:there} {sv:are} too many cars in the city center.
She {sv:has} [worked|been working] at the bank for {art:a} long time.
We {past:met} many [friendly|kind|nice] people during {art:the} trip.
He {sv:wants} to become {art:an} engineer [when he grows up|in the future].
Many students {sv:find} mathematics [difficult|hard][,|] but it {sv:is} very useful.
I have [always|long] been interested {prep:in>about} history and {pl:museums}.
{pro:My friend and I} {past:spent} the whole day at the beach[.|!]
When I was a child[,|] I {past:thought} that the moon {sv:was} made of cheese.
Learning a new language {sv:takes} [a lot of|plenty of] time and {art:>a} patience.
The weather {sv:was} [so bad|so awful] that we {past:had} to cancel {art:the} picnic.
He {past:told} me that he [would|will] call {pro:me} later.
There {sv:are} [many|a lot of|lots of] people who {sv:like} to travel abroad.
My mother {sv:cooks} dinner for {pro:us} [every|each] evening.
[Nowadays|These days][,|] {pl:people} {sv:spend} too much time on {there:their} phones.
I {past:lost} my wallet[,|] so I {past:went} to {art:the} police station.
This book {sv:is} {cmp:better} than the [film|movie] version.
Our teacher {sv:gives} us [too much|a lot of|lots of] homework on {pl:weekends>weekend}.
{pro:She} [can't|cannot] come to the party because she {sv:has} a cold.
We {past:took} {art:a} taxi because it was [raining heavily|raining hard|pouring].
The hotel {sv:was} clean[,|] and the {pl:rooms} were [very|quite] large.
I {sv:don't} understand why {there:they're} always [late|running late].
After work[,|] we {past:went} to {art:a} cafe near {art:the} station.
My grandparents {sv:live} on a farm and {sv:grow} [their own vegetables|vegetables themselves].
It {past:began} to snow[,|] and the children {past:ran} outside to play.
{its:It's} [a good idea|wise] to save some money every month, but it {sv:is} not always easy.
He {sv:speaks} English [very well|fluently] because he {past:grew} up in London.
I {past:forgot} to bring my umbrella, so I {past:got} [wet|soaked|completely wet].
The movie {sv:was} [so boring|so dull|so slow] that I {past:fell} asleep.
My best friend {sv:lives} [far away|in another city][,|] so we rarely {sv:see} each other.
Could you tell {pro:me} where {art:the} nearest [bank|ATM|cash machine] is?
She {past:chose} the red dress because it {sv:was} [cheaper|less expensive].
We {sv:have} [lived|been living] in this town for {pl:years>year}.
"""
MARK = re.compile(r"\{(\w+):([^{}>]*)(?:>([^{}]*))?\}|\[([^\[\]]*)\]")
SV_PAIRS = dict(table("is=are; was=were; has=have; does=do; doesn't=don't; isn't=aren't; goes=go"))
SV_PAIRS.update({v: k for k, v in list(SV_PAIRS.items())})
PAST_WRONG = dict(
    table(
        "went=goed; swam=swimmed; ate=eated; taught=teached; caught=catched; wrote=writed; bought=buyed;"
        "drew=drawed; told=telled; drove=drived; blew=blowed; left=leaved; built=builded; ran=runned;"
        "brought=bringed; threw=throwed; sold=selled; fell=falled; won=winned; spent=spended; took=taked;"
        "made=maked; thought=thinked; felt=feeled; flew=flied; sang=singed; saw=seed; slept=sleeped;"
        "had=haved; met=meeted; lost=losed; began=beginned; forgot=forgetted; got=getted; grew=growed;"
        "chose=choosed"
    )
)
PLURAL_WRONG = dict(
    table(
        "children=childs; mice=mouses; women=womans; leaves=leafs; loaves=loafs; knives=knifes;"
        "geese=gooses; teeth=tooths; feet=foots; people=peoples"
    )
)
PRONOUNS = dict(table("I=me; he=him; she=her; we=us; they=them"))
PRONOUNS.update({v: k for k, v in list(PRONOUNS.items())})
THERE = {"their": "there", "there": "their", "they're": "their", "its": "it's", "it's": "its"}


def same_case(model: str, word: str) -> str:
    return word[:1].upper() + word[1:] if model[:1].isupper() else word


def sv_toggle(verb: str) -> str:
    """The verb with the other number: walks <-> walk, watches <-> watch, studies <-> study, is <-> are."""
    if verb in SV_PAIRS:
        return SV_PAIRS[verb]
    if verb.endswith("ies"):
        return verb[:-3] + "y"
    if verb.endswith(("ches", "shes", "sses", "xes")):
        return verb[:-2]
    if verb.endswith("s"):
        return verb[:-1]
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + ("es" if verb.endswith(("ch", "sh", "ss", "x", "o")) else "s")


def pronoun_swap(phrase: str) -> str:
    out = []
    for w in phrase.split():
        new = PRONOUNS.get(w if w == "I" else w.lower(), w)
        out.append(new if new == "I" or w == "I" else same_case(w, new))
    return " ".join(out)


ERRORS = {
    "sv": lambda w: same_case(w, sv_toggle(w.lower())),
    "past": lambda w: PAST_WRONG[w],
    "art": lambda w: {"a": "an", "an": "a", "the": ""}[w],
    "pl": lambda w: PLURAL_WRONG.get(w, w[:-1]),
    "its": lambda w: same_case(w, THERE[w.lower()]),
    "there": lambda w: same_case(w, THERE[w.lower()]),
    "cmp": lambda w: ("most " if w.endswith("est") else "more ") + w,
    "pro": pronoun_swap,
}


def realize(marked: str, wrong: Collection = (), choice: tuple[int, ...] = ()) -> str:
    """The sentence with the tags in `wrong` (indexes, or "cap") made errors and wording `choice`."""
    counts = {"tag": 0, "alt": 0}

    def sub(m: re.Match) -> str:
        if m.group(4) is not None:
            k = counts["alt"]
            counts["alt"] += 1
            return m.group(4).split("|")[choice[k] if choice else 0]
        kind, right, explicit = m.group(1, 2, 3)
        counts["tag"] += 1
        if counts["tag"] - 1 not in wrong:
            return right
        return explicit if explicit is not None else ERRORS[kind](right)

    text = re.sub(r" +", " ", MARK.sub(sub, marked)).strip()
    return text[0].lower() + text[1:] if "cap" in wrong else text


def n_tags(marked: str) -> int:
    return sum(m.group(4) is None for m in MARK.finditer(marked))


def sentences() -> list[str]:
    return [realize(line) for line in GRAMMAR.strip().splitlines()]


def build_grammar(rng: random.Random) -> list[dict]:
    """Per sentence: each error alone, two errors together, and sometimes one error plus a lowercase start."""
    pairs: dict[str, str] = {}
    for line in GRAMMAR.strip().splitlines():
        target, n = realize(line), n_tags(line)
        variants = [{i} for i in range(n)]
        if n >= 2:
            variants.append(set(rng.sample(range(n), 2)))
        if rng.random() < 0.25:
            variants.append({rng.randrange(n), "cap"})
        for wrong in variants:
            pairs.setdefault(realize(line, wrong), target)
    records = [{"input": src, "target": tgt} for src, tgt in pairs.items()]
    records += [{"input": s, "target": s} for s in rng.sample(sentences(), round(len(records) / 9))]
    rng.shuffle(records)
    return records


def build_jfleg(rng: random.Random) -> list[dict]:
    """Per sentence: every error, and all but one error plus a lowercase start; corrections: every wording."""
    records = []
    for line in JFLEG.strip().splitlines():
        options = [len(m.group(4).split("|")) for m in MARK.finditer(line) if m.group(4) is not None]
        fixes = [realize(line, choice=c) for c in itertools.product(*map(range, options))]
        n = n_tags(line)
        for wrong in (set(range(n)), set(rng.sample(range(n), n - 1)) | {"cap"}):
            records.append({"sentence": realize(line, wrong), "corrections": fixes[:4]})  # at most 4
    rng.shuffle(records)
    return records


def rounded(value: Decimal, places: int) -> str:
    return str(value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def c_to_f(c: int) -> str:
    return rounded(Decimal(c) * 9 / 5 + 32, 1)


def smallest_factor(n: int) -> int:
    return next((p for p in range(2, int(n**0.5) + 1) if n % p == 0), n)


def join_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def vowels(text: str) -> list[str]:
    return [ch for ch in text.lower() if ch in "aeiou"]


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def duration(minutes: int) -> str:
    h, m = divmod(minutes, 60)
    return join_and([count(x, unit) for x, unit in ((h, "hour"), (m, "minute")) if x])


def prime_answers(n: int) -> dict[str, str]:
    p = smallest_factor(n)
    if p == n:
        return {
            "yes": f"Yes, {n} is a prime number: its only divisors are 1 and {n}.",
            "det": f"{n} is prime.",
        }
    return {
        "yes": f"No, {n} is not prime. It is composite, because {n} = {p} x {n // p}.",
        "det": f"{n} is composite, since {n} = {p} x {n // p}.",
    }


# Alpaca phrasings, one per line: "instruction | input | output" (input may be empty; \\n is a newline).
TEMPLATES = {
    "+": """
What is {a} plus {b}? | | {a} plus {b} is {r}.
Add {a} and {b}. | | {a} + {b} = {r}
Calculate the sum of {a} and {b}. | | The sum of {a} and {b} is {r}.
Add the two numbers. | {a} and {b} | {a} + {b} = {r}
Find the sum of the following numbers. | {a}, {b} | The sum is {r}.
A shop sold {a} apples in the morning and {b} in the afternoon. How many did it sell? | | It sold {a} + {b} = {r} apples.
""",
    "-": """
What is {a} minus {b}? | | {a} minus {b} is {r}.
Subtract {b} from {a}. | | {a} - {b} = {r}
Subtract the second number from the first. | {a}, {b} | {a} - {b} = {r}
What is the difference between these two numbers? | {a} and {b} | The difference is {r}.
Sam had {a} marbles and gave away {b}. How many marbles does he have now? | | Sam has {a} - {b} = {r} marbles left.
""",
    "x": """
What is {a} times {b}? | | {a} times {b} is {r}.
Multiply {a} by {b}. | | {a} x {b} = {r}
Calculate the product of {a} and {b}. | | The product of {a} and {b} is {r}.
Multiply the two numbers. | {a}, {b} | {a} x {b} = {r}
A box holds {b} pencils. How many pencils are in {a} boxes? | | {a} boxes hold {a} x {b} = {r} pencils.
""",
    "c2f": """
Convert {c} degrees Celsius to Fahrenheit. | | {c} degrees Celsius is {f} degrees Fahrenheit.
What is {c} degrees Celsius in Fahrenheit? | | Using F = C x 9/5 + 32, {c} degrees Celsius is {f} degrees Fahrenheit.
Convert this temperature from Celsius to Fahrenheit, to one decimal place. | {c} degrees Celsius | {f} degrees Fahrenheit
""",
    "f2c": """
Convert {f} degrees Fahrenheit to Celsius. | | {f} degrees Fahrenheit is about {c} degrees Celsius.
Convert this temperature to Celsius, to one decimal place. | {f} degrees Fahrenheit | Using C = (F - 32) x 5/9, \
{f} degrees Fahrenheit is about {c} degrees Celsius.
""",
    "units": """
Convert {x} {src} to {dst}. | | {x} {src} is {about}{y} {dst}.
How many {dst} are in {x} {src}? | | {x} {src} is {about}{y} {dst}.
Convert the following measurement to {dst}. | {x} {src} | {x} {src} is {about}{y} {dst}.
""",
    "sort_numbers": """
Sort these numbers from smallest to largest. | {lst} | {asc}
Arrange the following numbers in descending order. | {lst} | {desc}
Sort the numbers {lst} in ascending order. | | In ascending order: {asc}.
""",
    "sort_words": """
Sort these words alphabetically. | {lst} | {asc}
Put the following words in alphabetical order: {lst}. | | {asc}
""",
    "reverse": """
Reverse the word '{w}'. | | {r}
Write the following word backwards. | {w} | {r}
What is '{w}' spelled backwards? | | '{w}' spelled backwards is '{r}'.
Reverse the letters of this word. | {w} | {r}
""",
    "count": """
How many words are in the following sentence? | {s} | The sentence has {n} words.
Count the words in this sentence: "{s}" | | There are {n} words in the sentence.
Count the vowels (a, e, i, o, u) in the following sentence. | {s} | The sentence contains {v} vowels.
How many vowels does the word '{w}' contain? | | The word '{w}' contains {vw}: {vl}.
""",
    "plural": """
What is the plural of '{n}'? | | The plural of '{n}' is '{p}'.
Give the plural form of the noun. | {n} | {p}
Write the plural of {n}. | | {p}
What is the plural of this noun? | {n} | The plural of '{n}' is '{p}'.
""",
    "antonym": """
What is the opposite of '{w}'? | | The opposite of '{w}' is '{a}'.
Give an antonym for the following word. | {w} | {a}
Name a word that means the opposite of {w}. | | A common antonym of '{w}' is '{a}'.
""",
    "capital": """
What is the capital of {c}? | | The capital of {c} is {k}.
Name the capital city of {c}. | | {k}
Which city is the capital of the following country? | {C} | {k} is the capital of {c}.
Name the capital of the country below. | {C} | {k}
""",
    "capitals": "Give the capital of each country. | {lst} | {answer}",
    "number": """
Is {n} even or odd? | | {n} is {eo}.
Classify the number as even or odd. | {n} | {EO}
Is {n} a prime number? | | {yes}
Determine whether the following number is prime or composite. | {n} | {det}
""",
    "case": """
Rewrite the following sentence in uppercase. | {s} | {u}
Capitalize the first letter of every word in this sentence. | {s} | {t}
Convert "{s}" to all capital letters. | | {u}
""",
    "list": """
List {kw} {cat}. | | {num}
Name {kw} {cat}. | | Here are {kw} {cat}: {flat}.
Give me {kw} examples of {cat}. | | {dash}
List the requested number of items from the given category. | Category: {cat}\\nNumber: {k} | {num}
""",
    "date": """
Convert the date {iso} to the format 'Month Day, Year'. | | {long}
Rewrite this date in YYYY-MM-DD format. | {us} (MM/DD/YYYY) | {iso}
Write the date in words. | {iso} | {long}
What day of the week was {long}? | | {long} was a {wd}.
""",
}
UNITS = [  # from, to, factor, approximate factor?
    ("kilometers", "miles", "0.621371", True), ("miles", "kilometers", "1.609344", False),
    ("kilograms", "pounds", "2.20462", True), ("pounds", "kilograms", "0.453592", True),
    ("meters", "feet", "3.28084", True), ("inches", "centimeters", "2.54", False),
    ("hours", "minutes", "60", False), ("liters", "milliliters", "1000", False),
]  # fmt: skip


def fill(rng: random.Random, family: str, **values) -> dict:
    line = rng.choice(TEMPLATES[family].strip().splitlines())
    ins, inp, out = (part.strip().format(**values).replace("\\n", "\n") for part in line.split("|"))
    return {"instruction": ins, "input": inp, "output": out}


def alpaca_arithmetic(rng):
    op = rng.choice("+-x")
    a, b = (
        (rng.randint(3, 99), rng.randint(3, 40))
        if op == "x"
        else (rng.randint(200, 999), rng.randint(3, 199))
    )
    return fill(rng, op, a=a, b=b, r={"+": a + b, "-": a - b, "x": a * b}[op])


def alpaca_temperature(rng):
    if rng.random() < 0.6:
        c = rng.choice([x for x in range(-20, 46) if abs(x) != 1])
        return fill(rng, "c2f", c=c, f=c_to_f(c))
    f = rng.randint(2, 110)
    return fill(rng, "f2c", f=f, c=rounded((Decimal(f) - 32) * 5 / 9, 1))


def alpaca_units(rng):
    src, dst, factor, approx = rng.choice(UNITS)
    x = rng.randint(2, 250)
    exact = Decimal(x) * Decimal(factor)
    y = rounded(exact, 2).rstrip("0").rstrip(".")
    about = "about " if approx or Decimal(y) != exact else ""
    return fill(rng, "units", x=x, src=src, dst=dst, y=y, about=about)


def alpaca_sort(rng):
    if rng.random() < 0.5:
        nums = rng.sample(range(1, 100), rng.randint(5, 8))
        lst, asc, desc = (", ".join(map(str, ns)) for ns in (nums, sorted(nums), sorted(nums)[::-1]))
        return fill(rng, "sort_numbers", lst=lst, asc=asc, desc=desc)
    ws = rng.sample(sorted({w for cat in SIMPLE_CATEGORIES for w in CATEGORIES[cat]}), rng.randint(4, 6))
    return fill(rng, "sort_words", lst=", ".join(ws), asc=", ".join(sorted(ws)))


def alpaca_reverse(rng):
    w = rng.choice(REVERSE_WORDS)
    return fill(rng, "reverse", w=w, r=w[::-1])


def alpaca_count(rng):
    s, w = rng.choice(sentences()), rng.choice(REVERSE_WORDS)
    vw, vl = count(len(vowels(w)), "vowel"), ", ".join(vowels(w))
    return fill(rng, "count", s=s, n=len(s.split()), v=len(vowels(s)), w=w, vw=vw, vl=vl)


def alpaca_lexical(rng):
    if rng.random() < 0.5:
        n, p = rng.choice(PLURALS)
        return fill(rng, "plural", n=n, p=p)
    w, a = rng.choice(
        ANTONYMS + [(y, x) for x, y in ANTONYMS if y not in ("short", "modern", "thin", "lose")]
    )
    return fill(rng, "antonym", w=w, a=a)


def alpaca_capital(rng):
    if rng.random() < 0.1:
        picks = [(c.removeprefix("the "), k) for c, k in rng.sample(CAPITALS, rng.randint(3, 5))]
        answer = "\n".join(f"{c}: {k}" for c, k in picks)
        return fill(rng, "capitals", lst=", ".join(c for c, _ in picks), answer=answer)
    c, k = rng.choice(CAPITALS)
    return fill(rng, "capital", c=c, C=c[0].upper() + c[1:], k=k)


def alpaca_number(rng):
    n = rng.randint(2, 200)
    even = n % 2 == 0
    return fill(rng, "number", n=n, eo=("odd", "even")[even], EO=("Odd", "Even")[even], **prime_answers(n))


def alpaca_case(rng):
    s = rng.choice(sentences())
    return fill(rng, "case", s=s, u=s.upper(), t=" ".join(w[:1].upper() + w[1:] for w in s.split()))


def alpaca_list(rng):
    cat, k = rng.choice(sorted(CATEGORIES)), rng.randint(3, 5)
    items = rng.sample(CATEGORIES[cat], k)
    num = "\n".join(f"{i}. {w}" for i, w in enumerate(items, 1))
    dash = "\n".join(f"- {w}" for w in items)
    return fill(rng, "list", kw=NUMBER_WORDS[k], k=k, cat=cat, flat=join_and(items), num=num, dash=dash)


def alpaca_date(rng):
    d = datetime.date(1990, 1, 1) + datetime.timedelta(days=rng.randrange(12000))
    long = f"{MONTHS[d.month - 1]} {d.day}, {d.year}"
    return fill(
        rng, "date", iso=d.isoformat(), us=d.strftime("%m/%d/%Y"), long=long, wd=WEEKDAYS[d.weekday()]
    )


def build_alpaca(rng: random.Random) -> list[dict]:
    families = {alpaca_arithmetic: 36, alpaca_temperature: 14, alpaca_units: 16, alpaca_sort: 14,
                alpaca_reverse: 10, alpaca_count: 18, alpaca_lexical: 26, alpaca_capital: 28,
                alpaca_number: 16, alpaca_case: 10, alpaca_list: 18, alpaca_date: 14}  # fmt: skip
    records, seen = [], set()
    for family, n in families.items():
        while n:
            record = family(rng)
            if (record["instruction"], record["input"]) not in seen:
                seen.add((record["instruction"], record["input"]))
                records.append(record)
                n -= 1
    for q, a in EXPLANATIONS:  # half of the "What is X?" questions are asked as "Explain this term: X"
        if q.startswith("What is") and rng.random() < 0.5:
            ins = rng.choice(["Explain the following term in a few sentences.", "Define the following term."])
            records.append({"instruction": ins, "input": q.removeprefix("What is ").rstrip("?"), "output": a})
        else:
            records.append({"instruction": q, "input": "", "output": a})
    for q, text, summary in LONG_TEXTS:
        records.append({"instruction": q, "input": "", "output": text})
        ins = rng.choice(
            ["Summarize the following paragraph in one sentence.", "Summarize this text in one sentence."]
        )
        records.append({"instruction": ins, "input": text, "output": summary})
    rng.shuffle(records)
    return records


SYSTEM_PROMPTS = [
    "You are a concise assistant.",
    "You are a helpful assistant. Answer briefly and accurately.",
    "You are a friendly tutor who explains things simply.",
    "Answer in complete sentences.",
]


# Chat builders return up to three (user, assistant) turns; later turns refer back to earlier ones.
def chat_capitals(rng):
    (c1, k1), *rest = rng.sample(CAPITALS, 3)
    turns = [(f"What is the capital of {c1}?", f"The capital of {c1} is {k1}.")]
    for c, k in rest:
        ask = rng.choice(["And of {}?", "What about {}?", "And the capital of {}?"]).format(c)
        turns.append((ask, f"The capital of {c} is {k}."))
    return turns


def chat_temperature(rng):
    c = rng.choice([x for x in range(-25, 41) if abs(x) > 1])
    yes, side = ("Yes", "above") if c > 0 else ("No", "below")
    freezing = f"{yes}. Water freezes at 0 degrees Celsius (32 degrees Fahrenheit), so {c} degrees Celsius is {side} it."
    return [
        (
            f"What is {c} degrees Celsius in Fahrenheit?",
            f"{c} degrees Celsius is {c_to_f(c)} degrees Fahrenheit.",
        ),
        ("And in kelvin?", f"{c} degrees Celsius is {Decimal(c) + Decimal('273.15')} kelvin."),
        ("Is that above freezing?", freezing),
    ]


def chat_distance(rng):
    x = rng.randint(3, 40)
    hours = (
        f"{x}/5 = {Decimal(x) / 5} hours, which is {duration(x * 12)}"
        if x % 5
        else f"{x}/5 = {duration(x * 12)}"
    )
    return [
        (
            f"How many miles is {x} kilometers?",
            f"{x} kilometers is about {rounded(x * Decimal('0.621371'), 2)} miles.",
        ),
        ("And how many meters is that?", f"{x} kilometers is {x * 1000} meters."),
        ("How long would it take to walk that at 5 kilometers per hour?", f"It would take {hours}."),
    ]


def chat_arithmetic(rng):
    a, b, c = rng.randint(10, 99), rng.randint(10, 99), rng.randint(2, 9)
    s, p = a + b, (a + b) * c
    d = rng.randint(10, p - 1)
    return [
        (f"What is {a} plus {b}?", f"{a} plus {b} is {s}."),
        (f"Multiply that by {c}.", f"{s} x {c} = {p}."),
        (f"Now subtract {d}.", f"{p} - {d} = {p - d}."),
    ]


def chat_apples(rng):
    a, b, k = rng.randint(5, 30), rng.randint(5, 30), rng.randint(2, 6)
    c = rng.randint(1, a + b - k)
    left = a + b - c
    q, rem = divmod(left, k)
    share = f"Yes. {left} divided by {k} is {q}, so each friend gets {count(q, 'apple')}."
    if rem:
        share = (
            f"Not exactly. {left} divided by {k} is {q} with a remainder of {rem}, so each friend gets "
            f"{count(q, 'apple')} and {rem} {'is' if rem == 1 else 'are'} left over."
        )
    return [
        (
            f"I have {a} apples and buy {b} more. How many apples do I have now?",
            f"You have {a} + {b} = {a + b} apples.",
        ),
        (
            f"If I give away {c} of them, how many are left?",
            f"{a + b} - {c} = {left}, so {left} apples are left.",
        ),
        (f"Can I share those equally among {k} friends?", share),
    ]


def chat_prime(rng):
    n, m = rng.sample(range(11, 200), 2)
    return [
        (f"Is {n} a prime number?", prime_answers(n)["yes"]),
        (f"What about {m}?", prime_answers(m)["yes"]),
        (f"Is {m} even or odd?", f"{m} is {('odd', 'even')[m % 2 == 0]}."),
    ]


def chat_words(rng):
    if rng.random() < 0.5:
        (n1, p1), (n2, p2) = rng.sample(PLURALS, 2)
        w, a = rng.choice(ANTONYMS)
        return [
            (f"What is the plural of '{n1}'?", f"The plural of '{n1}' is '{p1}'."),
            (f"And the plural of '{n2}'?", f"The plural of '{n2}' is '{p2}'."),
            (f"What is the opposite of '{w}'?", f"The opposite of '{w}' is '{a}'."),
        ]
    r = rng.choice(REVERSE_WORDS)
    return [
        (f"Reverse the word '{r}'.", f"'{r}' reversed is '{r[::-1]}'."),
        ("How many letters does it have?", f"'{r}' has {len(r)} letters."),
        (
            "How many of them are vowels?",
            f"'{r}' has {count(len(vowels(r)), 'vowel')}: {join_and(vowels(r))}.",
        ),
    ]


def chat_list(rng):
    cat = rng.choice(SIMPLE_CATEGORIES)
    items = rng.sample(CATEGORIES[cat], 4)
    while sorted(map(len, items))[-1] == sorted(map(len, items))[-2]:  # one longest word
        items = rng.sample(CATEGORIES[cat], 4)
    longest = max(items, key=len)
    return [
        (f"Name four {cat}.", f"Here are four {cat}: {join_and(items)}."),
        ("Now sort them alphabetically.", ", ".join(sorted(items))),
        ("Which of those words is the longest?", f"'{longest}' is the longest, with {len(longest)} letters."),
    ]


def chat_explain(rng):
    q, a = rng.choice(EXPLANATIONS)
    if q.startswith("What is"):  # these answers start with a one-sentence definition
        return [(q, a), ("Can you say that in one sentence?", a.split(". ")[0] + ".")]
    return [(q, a), ("Thanks, that helps!", "You're welcome! Let me know if you have any other questions.")]


def build_chat(rng: random.Random) -> list[dict]:
    builders = [chat_capitals, chat_temperature, chat_distance, chat_arithmetic, chat_apples, chat_prime,
                chat_words, chat_list, chat_explain, chat_explain]  # fmt: skip
    sizes = [1] * 34 + [2] * 20 + [3] * 14
    rng.shuffle(sizes)
    with_system = set(rng.sample(range(len(sizes)), round(0.3 * len(sizes))))
    records, seen = [], set()
    for index, size in enumerate(sizes):
        turns = []
        while len(turns) != size or turns[0][0] in seen:
            turns = rng.choice(builders)(rng)[:size]
        seen.add(turns[0][0])
        messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if index in with_system else []
        for user, assistant in turns:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        records.append({"messages": messages})
    return records


# Reviews: {n} thing, {a}/{a2} aspects, {g}/{g2} good and {b}/{b2} bad adjectives, {i} intensifier.
# Neutral facts say {N}/{n} for the thing: "The film"/"the film", or "It"/"it" once it has been named.
REVIEW_DOMAINS = {
    "product": {
        "nouns": "blender, coffee maker, backpack, desk lamp, kettle, keyboard, water bottle, air fryer, tent, toaster",
        "aspects": "build quality, design, customer support, packaging, finish, overall quality",
        "verb": "bought", "ger": "buying", "again": "buy it again",
        "facts": """
{N} arrived quickly in a plain cardboard box.
{N} comes in black, white and gray.
The box included a manual and a warranty card.
I ordered {n} online and it arrived in four days.
{N} replaced an older one that I had for years.
I have used {n} a few times so far.
""",
    },
    "restaurant": {
        "nouns": "restaurant, cafe, pizza place, bistro, sushi bar, diner, steakhouse, noodle shop, Thai restaurant",
        "aspects": "food, service, staff, atmosphere, menu, decor, dessert, coffee",
        "verb": "visited", "ger": "choosing", "again": "eat here again",
        "facts": """
{N} opens at eleven and closes at ten.
{N} takes reservations by phone.
The menu has about twenty dishes.
{N} is next to the train station.
We went there for lunch with two friends.
Parking nearby is on the street.
""",
    },
    "movie": {
        "nouns": "movie, film, sequel, thriller, comedy, drama, horror film, musical, mystery, war film",
        "aspects": "acting, plot, soundtrack, dialogue, cinematography, ending, cast, script",
        "verb": "watched", "ger": "watching", "again": "watch it again",
        "facts": """
{N} runs a little over two hours.
{N} was released last spring.
{N} is based on a novel.
The story takes place in a small coastal town.
{N} is available on several streaming services.
Most of {n} was filmed in Canada.
""",
    },
}  # fmt: skip
GOOD = words(
    "excellent, wonderful, fantastic, superb, outstanding, great, impressive, lovely, brilliant, first-rate"
)
BAD = words("terrible, awful, disappointing, poor, dreadful, horrible, abysmal, subpar")
INTENSIFIERS = words("really, truly, absolutely, incredibly, genuinely, simply")
REVIEW_TEMPLATES = {
    "positive": """
I love this {n}. The {a} is {i} {g}.
This {n} exceeded my expectations, and the {a} was {g}.
What {ag} {n}! The {a} and the {a2} were both {g2}.
Highly recommended. The {a} is {g}, and I would happily {again}.
Five stars for this {n}. Everything from the {a} to the {a2} was {i} {g}.
As for this {n}, the {a} is {i} {g}. I am very happy with it.
Best {n} I have {verb} in years. The {a} was {g} and the {a2} was {g2}.
I was {i} impressed by this {n}; the {a} is {g}.
{G} {n}, would {again}.
I really loved this {n}. Highly recommended!
I {verb} this {n} last {when}, and it was {i} {g}. The {a} was {g2}, the {a2} was just as good, and I would \
happily {again}. I would recommend it to anyone.
""",
    "negative": """
I regret {ger} this {n}. The {a} was {i} {b}.
This {n} was a letdown; the {a} was {b}.
One star. The {a} was {b} and the {a2} was even worse.
Avoid this {n}. The {a} is {b}, and I will never {again}.
I wanted to like this {n}, but the {a} was {i} {b}.
Worst {n} I have {verb} in years. The {a} was {b} and the {a2} was {b2}.
Very disappointed with this {n}. The {a} was {b}, and the {a2} was not much better.
Do not waste your money on this {n}. The {a} is {i} {b}.
{B} {n}. I would not recommend it.
I {verb} this {n} last {when}, and it was a mistake. The {a} was {b}, the {a2} was {b2}, and it only got \
worse from there. I will never {again}.
""",
    "neutral": """
I {verb} this {n} last {when}. {fact}
This {n} is okay. {fact}
{fact} Overall it was fine, nothing more and nothing less.
The {a} was neither good nor bad. {fact}
It is an average {n}. {fact}
{fact} {fact2}
I have no strong feelings about this {n}. {fact}
As for this {n}, the {a} was about what I expected. {fact}
This {n} is okay, nothing special.
An average {n}, neither good nor bad.
I {verb} this {n} last {when}. {fact} {fact2} The {a} was neither good nor bad; it was about what \
I expected.
""",
}


def review(rng: random.Random, label: str) -> str:
    domain = REVIEW_DOMAINS[rng.choice(sorted(REVIEW_DOMAINS))]
    n = rng.choice(words(domain["nouns"]))
    a, a2 = rng.sample(words(domain["aspects"]), 2)
    (g, g2), (b, b2) = rng.sample(GOOD, 2), rng.sample(BAD, 2)
    template = rng.choice(REVIEW_TEMPLATES[label].strip().splitlines())
    f1, f2 = rng.sample(domain["facts"].strip().splitlines(), 2)
    named = "{n}" in template.split("{fact}")[0]
    fact = f1.format(N="It" if named else f"The {n}", n="it" if named else f"the {n}")
    named = named or "{" in f1
    fact2 = f2.format(N="It" if named else f"The {n}", n="it" if named else f"the {n}")
    text = template.format(
        n=n, a=a, a2=a2, g=g, g2=g2, b=b, b2=b2, i=rng.choice(INTENSIFIERS), verb=domain["verb"],
        ger=domain["ger"], again=domain["again"], ag=("an " if g[0] in "aeiou" else "a ") + g, fact=fact,
        G=g.capitalize(), B=b.capitalize(),
        fact2=fact2, when=rng.choice(["week", "month", "weekend", "Friday", "spring", "summer"]),
    )  # fmt: skip
    return text[0].upper() + text[1:]


def build_classification(rng: random.Random) -> list[dict]:
    records, seen = [], set()
    for label in ("positive", "negative", "neutral"):
        n = 0
        while n < 115:
            text = review(rng, label)
            if text not in seen:
                seen.add(text)
                records.append({"text": text, "label": label})
                n += 1
    rng.shuffle(records)
    return records


def write(name: str, records: list[dict]) -> None:
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    (OUT / name).write_text(lines, encoding="utf-8", newline="\n")
    print(f"wrote {OUT / name} ({len(records)} records)")


def main() -> None:
    rng = random.Random(0)
    write("alpaca_sample.jsonl", build_alpaca(rng))
    write("grammar_sample.jsonl", build_grammar(rng))
    write("grammar_jfleg_sample.jsonl", build_jfleg(rng))
    write("chat_sample.jsonl", build_chat(rng))
    write("classification_sample.jsonl", build_classification(rng))


if __name__ == "__main__":
    main()
