use crate::config::Global;
use crate::store;

pub async fn run(g: Global) -> anyhow::Result<()> {
    let pool = store::connect(g.database_url.expose(), 2).await?;
    store::migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}
