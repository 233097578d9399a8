//! Prints N active product ids of the bench database (for the load generator's scripts).
//! Usage: idlist DB N
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let conn = rusqlite::Connection::open(&args[1]).expect("open");
    let n: i64 = args[2].parse().expect("n");
    let mut stmt = conn.prepare("select id from rec_products where deleted_at is null order by id limit ?1").unwrap();
    for id in stmt.query_map([n], |r| r.get::<_, String>(0)).unwrap() {
        println!("{}", id.unwrap());
    }
}
