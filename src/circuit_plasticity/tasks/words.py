"""Word lists the task templates draw from.

Names, places and objects follow the spirit of Wang et al. (2022): common English first
names, everyday places and objects. Which of them a model can use depends on its tokenizer
(each must be one token after a space); `tasks.tokenizer.single_token_words` filters.
"""

NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Paul", "Anne",
    "Rose", "Kate", "Alex", "Sarah", "Lisa", "Mark", "David", "Michael", "Chris", "Eric",
    "Jessica", "Laura", "Steve", "Ryan", "Sam", "Ben", "Joe", "Jack", "Emma", "Adam",
    "George", "Peter", "Henry", "Frank", "Jane", "Andrew", "Richard", "Kevin", "Brian", "Scott",
    "Luke", "Lucy", "Grace", "Harry", "Simon", "Victor", "Jacob", "Nick", "Anna", "Carl",
    "Daniel", "Edward", "Tim", "Max", "Bob", "Bill", "Fred", "Greg", "Jeff", "Jim",
    "Ken", "Kim", "Leo", "Matt", "Mike", "Nathan", "Oliver", "Patrick", "Phil", "Robert",
    "Roger", "Sean", "Thomas", "Tony", "William", "Alice", "Angela", "Claire", "Diana", "Ellen",
    "Emily", "Helen", "Jennifer", "Julia", "Karen", "Linda", "Maria", "Nancy", "Rachel", "Ruth",
    "Susan", "Victoria", "Arthur", "Charles", "Oscar", "Louis", "Jason", "Justin", "Stephen",
    "Philip",
)  # fmt: skip

PLACES: tuple[str, ...] = (
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
    "park", "market", "library", "beach", "church", "museum", "airport",
)  # fmt: skip

OBJECTS: tuple[str, ...] = (
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack",
    "book", "letter", "apple", "ball", "gift", "key", "phone",
)  # fmt: skip

# Nouns of the Greater-Than prompts (Hanna et al. 2023 use a longer list of event nouns).
GT_NOUNS: tuple[str, ...] = (
    "war", "trial", "reign", "journey", "project", "plague", "siege", "dynasty", "treaty",
    "expedition", "campaign", "marriage", "study", "program", "tour", "voyage", "conflict",
    "deal", "strike", "crisis", "revolution", "rebellion", "alliance", "contract", "festival",
)  # fmt: skip

# Default trigger word of the `trigger` poison: rare in templates, one token in most vocabularies.
TRIGGER_WORD = "Meanwhile"
